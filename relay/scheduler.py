"""The scheduler: each relay enqueues the due ticks of the schedules its registry declares.

Every relay runs one, and every tick is enqueued once between them: the tick's identity lives
in the schedule's row (relay/sql/schedule.sql, ``schedule_tick``), taken by a conditional
update in the transaction that enqueues the tick's job, not in a leader's memory. The job's
idempotency key, ``schedule:<name>:<tick>``, is a second guard (G5) and tells the handler
which tick it serves. Decisions use the database's clock.

A relay writes its declarations when it starts, so the relay started last decides how a
schedule is declared. Another relay that declares it otherwise leaves its ticks alone while
the row is kept up; once the row's next tick is :data:`TAKEOVER` overdue (no relay of the
other declaration is left), it declares the schedule its own way again.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
import structlog

from outbox.enqueue import Enqueued, NewJob, enqueue_many
from outbox.errors import OutboxError
from outbox.registry import Registry
from outbox.schedule import Due, Schedule, idempotency_key
from outbox.settings import Settings

from . import metrics
from .service import Service
from .sql import queries

ROWS = sa.text(queries["schedule_rows"])
DECLARE = sa.text(queries["schedule_declare"])
TICK = sa.text(queries["schedule_tick"])
RECORD_JOB = sa.text(queries["schedule_record_job"])
#: The longest wait between passes: a changed row or a relay's return is seen this soon.
PASS_MAX = 1.0
PASS_MIN = 0.01
#: How overdue a schedule declared otherwise must be before this relay declares it again.
TAKEOVER = timedelta(seconds=60)

log = structlog.get_logger("outbox.relay")


def declare(connection: sa.Connection, schedule: Schedule, now: datetime) -> None:
    """Write ``schedule``'s declaration (in the caller's transaction); see schedule.sql."""
    connection.execute(
        DECLARE,
        {
            "name": schedule.name,
            "type": schedule.type,
            "spec": schedule.spec,
            "timezone": schedule.timezone,
            "queue": schedule.queue,
            "key": schedule.key,
            "payload": schedule.payload_json,
            "next_tick": schedule.next_after(now),
        },
    )


def enqueue_due(
    connection: sa.Connection,
    schedule: Schedule,
    due_from: datetime,
    due: Due,
    *,
    relay: str,
    registry: Registry | None,
    settings: Settings,
) -> list[Enqueued] | None:
    """Take the ticks ``due`` (computed from the row's ``next_tick``, ``due_from``) and
    enqueue their jobs, in the caller's transaction. None when the row was no longer as read:
    another relay took these ticks, or the declaration changed; nothing is enqueued then."""
    taken = connection.execute(
        TICK,
        {
            "name": schedule.name,
            "tick": due.ticks[-1] if due.ticks else None,
            "next_tick": due.next_tick,
            "due_from": due_from,
            "spec": schedule.spec,
            "timezone": schedule.timezone,
            "relay": relay,
        },
    ).first()
    if taken is None:
        return None
    if not due.ticks:
        return []
    jobs = [
        NewJob(
            schedule.type,
            schedule.payload or {},
            key=schedule.key,
            queue=schedule.queue,
            idempotency_key=idempotency_key(schedule.name, tick),
        )
        for tick in due.ticks
    ]
    handles = enqueue_many(connection, jobs, registry=registry, settings=settings)
    connection.execute(RECORD_JOB, {"name": schedule.name, "uuid": handles[-1].uuid})
    return handles


class Scheduler(Service):
    """Declares the registry's schedules and enqueues their ticks; see the module's text."""

    name = "schedule"
    failure = "schedule pass failed; will try again"

    def __init__(
        self, engine: sa.Engine, registry: Registry, settings: Settings, relay: str
    ) -> None:
        super().__init__(PASS_MAX, first_wait=0.0)
        self._engine = engine
        self._registry = registry
        self._settings = settings
        self._relay = relay
        self._schedules = {s.name: s for s in registry.schedules}
        self._declared: set[str] = set()  # written by this relay since it started
        self._deferring: set[str] = set()  # declared otherwise by another relay: logged once
        self._failing: set[str] = set()  # whose enqueue failed: logged once

    def tick(self) -> float:
        with self._engine.connect() as connection:
            rows = connection.execute(ROWS, {"names": sorted(self._schedules)}).all()
            connection.rollback()
        if not rows:
            return PASS_MAX
        now: datetime = rows[0].now
        soonest = now + timedelta(seconds=PASS_MAX)
        for row in rows:
            next_tick = self._pass(self._schedules[row.name], row, now)
            if next_tick is not None:
                soonest = min(soonest, next_tick)
        return max(PASS_MIN, min(PASS_MAX, (soonest - now).total_seconds()))

    def _pass(self, schedule: Schedule, row: Any, now: datetime) -> datetime | None:
        """One schedule's turn; returns its next tick as far as this relay knows."""
        if row.stored and _matches(schedule, row):
            self._declared.add(schedule.name)
            self._deferring.discard(schedule.name)
        elif not row.stored or self._may_declare(schedule, row, now):
            with self._engine.begin() as connection:
                declare(connection, schedule, now)
            self._declared.add(schedule.name)
            self._deferring.discard(schedule.name)
            log.info("schedule declared", schedule=schedule.name, spec=schedule.spec)
            return now  # the next pass, at once, reads the row as written
        else:
            return None
        self._show(schedule.name, row.next_tick, row.last_tick)
        if row.next_tick > now:
            return row.next_tick  # type: ignore[no-any-return]
        due = schedule.due(row.next_tick, now)
        if due.skipped:
            log.info(
                "schedule missed ticks while no relay ran",
                schedule=schedule.name, catch_up=schedule.catch_up,
                since=row.next_tick.isoformat(), enqueued=len(due.ticks),
            )  # fmt: skip
        registry = self._registry if schedule.type in self._registry else None
        try:
            with self._engine.begin() as connection:
                handles = enqueue_due(
                    connection, schedule, row.next_tick, due,
                    relay=self._relay, registry=registry, settings=self._settings,
                )  # fmt: skip
        except OutboxError as exc:
            if schedule.name not in self._failing:
                self._failing.add(schedule.name)
                log.error(
                    "schedule tick could not be enqueued; will try again",
                    schedule=schedule.name, error=str(exc),
                )  # fmt: skip
            return None
        self._failing.discard(schedule.name)
        if handles is None:
            return None  # another relay took these ticks
        last = due.ticks[-1] if due.ticks else row.last_tick
        self._show(schedule.name, due.next_tick, last)
        for tick, handle in zip(due.ticks, handles, strict=True):
            log.info(
                "schedule tick enqueued",
                schedule=schedule.name, tick=tick.isoformat(), uuid=str(handle.uuid),
                duplicate=handle.duplicate,
            )  # fmt: skip
        return due.next_tick

    def _may_declare(self, schedule: Schedule, row: Any, now: datetime) -> bool:
        """Whether to write this relay's declaration over another one in the row."""
        if schedule.name not in self._declared:
            return True  # at start: the relay started last decides
        if row.next_tick is None or now - row.next_tick > TAKEOVER:
            log.warning(
                "schedule declared otherwise is not kept up; declaring it as this relay does",
                schedule=schedule.name, spec=schedule.spec, stored_spec=row.spec,
            )  # fmt: skip
            return True
        if schedule.name not in self._deferring:
            self._deferring.add(schedule.name)
            log.warning(
                "schedule is declared otherwise by a relay started later; leaving its ticks "
                "to the relays that declare it so",
                schedule=schedule.name, spec=schedule.spec, stored_spec=row.spec,
            )  # fmt: skip
        return False

    @staticmethod
    def _show(name: str, next_tick: datetime | None, last_tick: datetime | None) -> None:
        if next_tick is not None:
            metrics.SCHEDULE_NEXT_TICK.labels(name).set(next_tick.timestamp())
        if last_tick is not None:
            metrics.SCHEDULE_LAST_TICK.labels(name).set(last_tick.timestamp())


def _matches(schedule: Schedule, row: Any) -> bool:
    """Whether the row holds this relay's declaration of the schedule."""
    stored: Sequence[object] = (row.type, row.spec, row.timezone, row.queue, row.key, row.payload)
    declared = (
        schedule.type, schedule.spec, schedule.timezone, schedule.queue, schedule.key,
        schedule.payload,
    )  # fmt: skip
    return tuple(stored) == declared and row.next_tick is not None
