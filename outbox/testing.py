"""Throwaway databases for tests and benchmarks, yours and ours.

``server_dsn()`` finds a server: ``OUTBOX_DSN`` if set, else PostgreSQL on
127.0.0.1:5432 if one answers, else the embedded server. ``temporary_database``
creates a database with a random name there, migrates it, and drops it after.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator

import psycopg
import sqlalchemy as sa

from outbox import migrate
from outbox.database import create_engine, libpq_dsn, sqlalchemy_url, start_embedded
from outbox.settings import Settings

LOCAL_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"


def server_dsn(settings: Settings | None = None) -> str:
    """A DSN of a server that answers, preferring the configured one."""
    settings = settings or Settings.load()
    if settings.dsn:
        return settings.dsn
    with contextlib.suppress(psycopg.OperationalError):
        psycopg.connect(LOCAL_SERVER, connect_timeout=2).close()
        return LOCAL_SERVER
    return start_embedded(settings.embedded_dir)


@contextlib.contextmanager
def temporary_database(
    server: str, *, prefix: str = "outbox_test", migrated: bool = True
) -> Iterator[str]:
    """Yield the DSN of a new database on ``server``; drop it on exit."""
    name = f"{prefix}_{os.getpid()}_{secrets.token_hex(4)}"
    admin = libpq_dsn(server)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    dsn = sqlalchemy_url(server).set(database=name).render_as_string(hide_password=False)
    try:
        if migrated:
            engine = create_engine(dsn, poolclass=sa.NullPool)
            try:
                migrate.upgrade(engine)
            finally:
                engine.dispose()
        yield dsn
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
