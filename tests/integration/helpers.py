"""Reading back what the database holds, for assertions."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator, Mapping
from typing import Any
from uuid import UUID

import sqlalchemy as sa

from outbox.database import create_engine, sqlalchemy_url


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
