"""Reading back what the database holds, for assertions."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import sqlalchemy as sa


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
