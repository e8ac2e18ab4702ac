"""A snapshot of the queues, as ``outbox status`` shows it."""

from __future__ import annotations

import dataclasses
from typing import Any

import sqlalchemy as sa

from outbox.sql import queries

DEPTH = sa.text(queries["status_depth"])
BLOCKED = sa.text(queries["status_blocked_keys"])


@dataclasses.dataclass(frozen=True, slots=True)
class QueueDepth:
    queue: str
    ready: int
    scheduled: int
    running: int
    dead: int
    oldest_ready_seconds: float | None


@dataclasses.dataclass(frozen=True, slots=True)
class BlockedKey:
    queue: str
    key: str
    uuid: str
    type: str
    waiting: int


@dataclasses.dataclass(frozen=True, slots=True)
class Status:
    queues: list[QueueDepth]
    blocked_keys: list[BlockedKey]

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def snapshot(connection: sa.Connection, *, blocked_limit: int = 100) -> Status:
    depth = [
        QueueDepth(
            queue=row.queue,
            ready=row.ready,
            scheduled=row.scheduled,
            running=row.running,
            dead=row.dead,
            oldest_ready_seconds=(
                None if row.oldest_ready_seconds is None else float(row.oldest_ready_seconds)
            ),
        )
        for row in connection.execute(DEPTH)
    ]
    blocked = [
        BlockedKey(row.queue, row.key, str(row.uuid), row.type, row.waiting)
        for row in connection.execute(BLOCKED, {"limit": blocked_limit})
    ]
    return Status(depth, blocked)
