"""A snapshot of the queues, as ``outbox status`` shows it."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from outbox.sql import queries

DEPTH = sa.text(queries["status_depth"])
BLOCKED = sa.text(queries["status_blocked_keys"])
RELAYS = sa.text(queries["status_relays"])
UNRUNNABLE = sa.text(queries["status_unrunnable"])
THROUGHPUT = sa.text(queries["status_throughput"])
SCHEDULES = sa.text(queries["status_schedules"])


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
    #: The job types it has handlers for: the only ones it claims.
    types: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True, slots=True)
class Unrunnable:
    """Ready jobs of one type and queue that no live relay can run: none alive takes the
    queue with a handler for the type. They wait for a relay that can."""

    queue: str
    type: str
    jobs: int
    #: How long the oldest of them has been ready.
    oldest_seconds: float


@dataclasses.dataclass(frozen=True, slots=True)
class ScheduleState:
    """A periodic schedule (``registry.schedule``) as its row holds it; times in ISO 8601."""

    name: str
    type: str
    #: The cron expression (in ``timezone``) or ``every <interval>``, as declared.
    spec: str
    timezone: str
    queue: str | None
    key: str | None
    #: The latest tick whose job was enqueued, and that job.
    last_tick: str | None
    last_job_uuid: str | None
    #: The relay that enqueued it.
    relay: str | None
    next_tick: str | None
    #: How long the next tick is past due; beyond a few seconds, no relay that declares the
    #: schedule is running.
    overdue_seconds: float


@dataclasses.dataclass(frozen=True, slots=True)
class Status:
    queues: list[QueueDepth]
    blocked_keys: list[BlockedKey]
    relays: list[LiveRelay] = dataclasses.field(default_factory=list)
    #: Ends of attempts over the last minute: {queue: {succeeded|retried|dead: count}}.
    last_minute: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    #: Ready jobs no live relay can run, by queue and type (rolling deploys).
    unrunnable: list[Unrunnable] = dataclasses.field(default_factory=list)
    #: Periodic schedules, by name.
    schedules: list[ScheduleState] = dataclasses.field(default_factory=list)

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
    last_minute: dict[str, dict[str, int]] = {}
    for row in connection.execute(THROUGHPUT):
        last_minute.setdefault(row.queue, {})[row.event] = row.jobs
    return Status(
        depth, blocked, live_relays(connection), last_minute, unrunnable_jobs(connection),
        schedules=schedules(connection),
    )  # fmt: skip


def live_relays(connection: sa.Connection) -> list[LiveRelay]:
    """The relays whose heartbeat has not expired."""
    return [
        LiveRelay(
            row.relay, row.host, row.pid, list(row.queues), row.concurrency, row.version,
            float(row.heartbeat_age_seconds), list(row.types),
        )
        for row in connection.execute(RELAYS)
    ]  # fmt: skip


def unrunnable_jobs(connection: sa.Connection) -> list[Unrunnable]:
    """Ready jobs no live relay can run, by queue and type."""
    return [
        Unrunnable(row.queue, row.type, row.jobs, float(row.oldest_seconds))
        for row in connection.execute(UNRUNNABLE)
    ]


def schedules(connection: sa.Connection) -> list[ScheduleState]:
    """The periodic schedules, by name."""
    return [
        ScheduleState(
            row.name, row.type, row.spec, row.timezone, row.queue, row.key, _iso(row.last_tick),
            None if row.last_job_uuid is None else str(row.last_job_uuid), row.relay,
            _iso(row.next_tick), float(row.overdue_seconds),
        )
        for row in connection.execute(SCHEDULES)
    ]  # fmt: skip


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat()
