"""Reading back what the database holds, for assertions."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator, Mapping
from typing import Any
from uuid import UUID

import psycopg
import sqlalchemy as sa

from outbox import locks
from outbox.database import create_engine, libpq_dsn, sqlalchemy_url
from tests.integration.relay_harness import wait_for


def jobs(engine: sa.Engine, where: str = "true", **params: Any) -> list[sa.Row[Any]]:
    with engine.connect() as conn:
        return list(
            conn.execute(sa.text(f"SELECT * FROM outbox_jobs WHERE {where} ORDER BY id"), params)
        )


def history(engine: sa.Engine, uuid: UUID | None = None) -> list[sa.Row[Any]]:
    sql = "SELECT * FROM outbox_history" + (" WHERE job_uuid = :u" if uuid else "") + " ORDER BY id"
    with engine.connect() as conn:
        return list(conn.execute(sa.text(sql), {"u": uuid}))


def count(engine: sa.Engine, table: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one())


@contextlib.contextmanager
def login_role(
    engine: sa.Engine, dsn: str, member_of: str | None, settings: Mapping[str, str] | None = None
) -> Iterator[sa.Engine]:
    """An engine logged in as a new role (roles are cluster-wide: a unique name), a member of
    ``member_of``, with ``settings`` as its own defaults (``ALTER ROLE ... SET``); dropped
    after."""
    name = f"outbox_t_{secrets.token_hex(4)}"
    group = f" IN ROLE {member_of}" if member_of else ""
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE ROLE {name} LOGIN{group}"))
        for setting, value in (settings or {}).items():
            conn.execute(sa.text(f"ALTER ROLE {name} SET {setting} = '{value}'"))
    url = sqlalchemy_url(dsn).set(username=name, password=None).render_as_string(False)
    member = create_engine(url, poolclass=sa.NullPool)
    try:
        yield member
    finally:
        member.dispose()
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP OWNED BY {name}"))
            conn.execute(sa.text(f"DROP ROLE {name}"))


@contextlib.contextmanager
def relay_idle(dsn: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """A session standing for an idle relay: it holds the idle mark (relay/idle.py), so that
    enqueue notifies."""
    with holding(dsn, f"SELECT pg_advisory_lock_shared{locks.IDLE}") as marked:
        yield marked


@contextlib.contextmanager
def holding(dsn: str, lock: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """A session of its own that runs ``lock`` (an advisory lock) first. On leaving, waits
    until the server has ended the session and let its locks go."""
    with psycopg.connect(libpq_dsn(dsn), autocommit=True) as session:
        session.execute(lock)
        pid = session.info.backend_pid
        yield session
    with psycopg.connect(libpq_dsn(dsn), autocommit=True) as other:
        # the server ends the session after the client has gone
        wait_for(lambda: not other.execute(HOLDS_LOCKS, (pid,)).fetchone(), timeout=5,
                 what=f"session {pid} to let its advisory locks go")  # fmt: skip


HOLDS_LOCKS = "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND pid = %s"


def idle_marks(engine: sa.Engine) -> int:
    """Sessions holding the idle mark (relay/idle.py) in the engine's database."""
    with engine.connect() as conn:
        return int(
            conn.execute(IDLE_MARKS, {"cls": locks.IDLE[0], "obj": locks.IDLE[1]}).scalar_one()
        )


IDLE_MARKS = sa.text(
    "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
    "WHERE d.datname = current_database() AND l.locktype = 'advisory' "
    "AND l.classid = :cls AND l.objid = :obj AND l.granted"
)
