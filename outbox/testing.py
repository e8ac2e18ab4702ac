"""Throwaway databases for tests and benchmarks, yours and ours.

``server_dsn()`` finds a server: ``OUTBOX_DSN`` if set, else PostgreSQL on
127.0.0.1:5432 if one answers, else the embedded server. ``temporary_database``
creates a database with a random name there, migrates it, and drops it after.
``empty_tables`` empties outbox's tables between tests that commit.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator

import psycopg
import sqlalchemy as sa

from outbox import migrate, schema
from outbox.database import LOCAL_SERVER, create_engine, find_server, libpq_dsn, sqlalchemy_url
from outbox.errors import ConfigurationError
from outbox.settings import Settings

__all__ = ["LOCAL_SERVER", "empty_tables", "server_dsn", "temporary_database"]


def server_dsn(settings: Settings | None = None) -> str:
    """A DSN of a server that answers, by the command line's rule (``find_server``)."""
    return find_server(settings or Settings.load()).dsn


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


def empty_tables(connection: sa.Connection) -> None:
    """Empty every outbox table, in the transaction of ``connection``.

    History and seals are append-only (G7): their triggers refuse ``TRUNCATE``. For this
    transaction only, ``session_replication_role = replica`` sets those triggers aside,
    which a superuser may do (or a role granted ``SET`` on that parameter).
    """
    tables = ", ".join(table.name for table in schema.metadata.sorted_tables)
    try:
        with connection.begin_nested():
            connection.execute(sa.text("SET LOCAL session_replication_role = replica"))
    except sa.exc.ProgrammingError as exc:
        if not isinstance(exc.orig, psycopg.errors.InsufficientPrivilege):
            raise
        raise ConfigurationError(
            "emptying outbox's tables sets session_replication_role, which this role may "
            "not: use a superuser in tests, or GRANT SET ON PARAMETER "
            "session_replication_role TO it (the append-only triggers refuse TRUNCATE)"
        ) from None
    connection.execute(sa.text(f"TRUNCATE {tables}"))
