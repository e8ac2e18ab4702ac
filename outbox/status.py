"""A snapshot of the queues, as ``outbox status`` shows it."""

from __future__ import annotations

import dataclasses
from typing import Any

import sqlalchemy as sa

from outbox.sql import queries

DEPTH = sa.text(queries["status_depth"])
BLOCKED = sa.text(queries["status_blocked_keys"])
RELAYS = sa.text(queries["status_relays"])
THROUGHPUT = sa.text(queries["status_throughput"])


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
class LiveRelay:
    relay: str
    host: str
    pid: int
    queues: list[str]
    concurrency: int
    version: str
    heartbeat_age_seconds: float


@dataclasses.dataclass(frozen=True, slots=True)
class Status:
    queues: list[QueueDepth]
    blocked_keys: list[BlockedKey]
    relays: list[LiveRelay] = dataclasses.field(default_factory=list)
    #: Ends of attempts over the last minute: {queue: {succeeded|retried|dead: count}}.
    last_minute: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)

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
    relays = [
        LiveRelay(
            row.relay, row.host, row.pid, list(row.queues), row.concurrency, row.version,
            float(row.heartbeat_age_seconds),
        )
        for row in connection.execute(RELAYS)
    ]  # fmt: skip
    last_minute: dict[str, dict[str, int]] = {}
    for row in connection.execute(THROUGHPUT):
        last_minute.setdefault(row.queue, {})[row.event] = row.jobs
    return Status(depth, blocked, relays, last_minute)
