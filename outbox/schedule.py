"""Periodic jobs: a schedule's declaration, checked when declared, and its ticks.

A schedule is declared on the registry (:meth:`outbox.Registry.schedule`) and its ticks are
enqueued by the relays that load that registry (relay/scheduler.py). This module is the pure
part: which instants are ticks, and which of them a relay enqueues when it finds several due
at once. Times are aware datetimes; ticks come back in UTC.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any, Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from outbox import validate
from outbox.errors import InvalidJob, RegistryError
from outbox.settings import MIB

CatchUp = Literal["latest", "none", "all"]
CATCH_UP_POLICIES: tuple[str, ...] = get_args(CatchUp)
#: With ``catch_up="all"``, at most this many missed ticks are enqueued, the latest ones.
CATCH_UP_MAX = 100
#: A tick a relay reaches within this of its time is on time and enqueued whatever the
#: catch-up policy (a relay slowed by a busy database does not drop ticks); older ones were
#: missed, while no relay ran.
GRACE = timedelta(seconds=10)
#: Interval ticks fall on whole multiples of the interval since this instant, so
#: ``every=timedelta(hours=1)`` ticks on the hour in UTC.
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

NAME_MAX = 128
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/-]*")
#: cron's nicknames, as the five fields they stand for.
_NICKNAMES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
#: Payloads are checked against the default limit at declaration; the relay's own limit
#: applies again when it enqueues.
_PAYLOAD_LIMIT = 1 * MIB


@dataclasses.dataclass(frozen=True, slots=True)
class Due:
    """What a relay does with a schedule whose next tick has come."""

    #: The ticks to enqueue, oldest first (none when every due tick was missed and the
    #: policy is ``"none"``).
    ticks: tuple[datetime, ...]
    #: The first tick after now: where the schedule's row moves its ``next_tick``.
    next_tick: datetime
    #: True when missed ticks were left out by the catch-up policy.
    skipped: bool


@dataclasses.dataclass(frozen=True, slots=True)
class Schedule:
    """A periodic job: enqueue ``type`` with ``payload`` at each tick of ``cron`` or ``every``.

    Checked when made: a bad declaration raises :class:`outbox.RegistryError` saying what is
    wrong, at import time, not at the first tick.
    """

    name: str
    type: str
    cron: str | None = None
    every: timedelta | None = None
    payload: Mapping[str, Any] | None = None
    queue: str | None = None
    key: str | None = None
    timezone: str = "UTC"
    catch_up: CatchUp = "latest"

    def __post_init__(self) -> None:
        _check_name(self.name)
        try:
            validate.job_type(self.type)
            if self.queue is not None:
                validate.queue(self.queue)
            validate.key(self.key)
            payload = json.loads(
                validate.encode_payload(
                    {} if self.payload is None else self.payload, _PAYLOAD_LIMIT
                )
            )
        except InvalidJob as exc:
            raise RegistryError(f"schedule {self.name!r}: {exc}") from None
        # A copy of the payload as JSON gives it back: later changes to the caller's dict
        # do not reach the ticks.
        object.__setattr__(self, "payload", payload)
        if self.catch_up not in CATCH_UP_POLICIES:
            raise RegistryError(
                f"schedule {self.name!r}: catch_up must be one of "
                f"{', '.join(map(repr, CATCH_UP_POLICIES))}, not {self.catch_up!r}"
            )
        if (self.cron is None) == (self.every is None):
            raise RegistryError(
                f'schedule {self.name!r}: give cron (e.g. cron="*/5 * * * *") or every '
                "(e.g. every=timedelta(minutes=5)), exactly one of them"
            )
        if self.every is not None:
            self._check_every(self.every)
        else:
            self._check_cron(self.cron)

    def _check_every(self, every: object) -> None:
        if not isinstance(every, timedelta):
            raise RegistryError(
                f"schedule {self.name!r}: every must be a timedelta, not {type(every).__name__}"
            )
        if every <= timedelta(0):
            raise RegistryError(f"schedule {self.name!r}: every must be positive, not {every}")
        if every.microseconds or every < timedelta(seconds=1):
            raise RegistryError(
                f"schedule {self.name!r}: every must be a whole number of seconds, not {every}"
            )
        if self.timezone != "UTC":
            raise RegistryError(
                f"schedule {self.name!r}: timezone applies to cron schedules only; an interval "
                "is a fixed duration (for a local time of day use cron, e.g. "
                f'cron="0 9 * * *", timezone="{self.timezone}")'
            )

    def _check_cron(self, cron: object) -> None:
        if not isinstance(cron, str):
            raise RegistryError(
                f"schedule {self.name!r}: cron must be a str, not {type(cron).__name__}"
            )
        zone = self._zone()
        fields = self._fields
        if len(fields.split()) != 5:
            raise RegistryError(
                f"schedule {self.name!r}: cron {cron!r} must have five fields (minute hour "
                "day-of-month month day-of-week) or be one of " + ", ".join(_NICKNAMES)
            )
        try:
            next(CronSim(fields, datetime.now(zone)))
        except CronSimError as exc:
            raise RegistryError(f"schedule {self.name!r}: cron {cron!r}: {exc}") from None
        except StopIteration:
            raise RegistryError(
                f"schedule {self.name!r}: cron {cron!r} never matches a date"
            ) from None

    def _zone(self) -> tzinfo:
        if self.timezone == "UTC":
            return UTC
        if not isinstance(self.timezone, str):
            raise RegistryError(
                f"schedule {self.name!r}: timezone must be an IANA name such as "
                f"'Europe/Paris', not {type(self.timezone).__name__}"
            )
        try:
            return ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise RegistryError(
                f"schedule {self.name!r}: unknown timezone {self.timezone!r}; use an IANA "
                "name such as 'Europe/Paris' or 'UTC'"
            ) from None

    @property
    def _fields(self) -> str:
        assert self.cron is not None
        text = self.cron.strip()
        return _NICKNAMES.get(text.lower(), text)

    @property
    def spec(self) -> str:
        """The declaration as the schedule's row and ``outbox status`` show it."""
        if self.every is not None:
            return f"every {_duration(self.every)}"
        assert self.cron is not None
        return " ".join(self.cron.split())

    @property
    def payload_json(self) -> str:
        return json.dumps(self.payload, separators=(",", ":"), ensure_ascii=False)

    def next_after(self, instant: datetime) -> datetime:
        """The first tick strictly after ``instant`` (an aware datetime), in UTC."""
        _check_aware(instant)
        if self.every is not None:
            return EPOCH + ((instant - EPOCH) // self.every + 1) * self.every
        zone = self._zone()
        for tick in CronSim(self._fields, instant.astimezone(zone)):
            # In the repeated hour of a change to winter time a local time of day comes
            # twice; cron runs the first, which may lie before ``instant``.
            if tick.astimezone(UTC) > instant:
                return tick.astimezone(UTC)
        raise RegistryError(
            f"schedule {self.name!r}: cron {self.cron!r} has no tick after {instant}"
        )

    def ticks_back(self, instant: datetime) -> Iterator[datetime]:
        """Ticks at or before ``instant``, the latest first, in UTC."""
        _check_aware(instant)
        if self.every is not None:
            tick = EPOCH + ((instant - EPOCH) // self.every) * self.every
            while True:
                yield tick
                tick -= self.every
        # Ticks fall on whole seconds. From a start with microseconds, cronsim's first
        # candidate is that whole second itself.
        start = instant.replace(microsecond=0) + timedelta(microseconds=1)
        previous = None
        for tick in CronSim(self._fields, start.astimezone(self._zone()), reverse=True):
            tick = tick.astimezone(UTC)
            if tick <= instant and (previous is None or tick < previous):
                yield tick
                previous = tick

    def due(self, next_tick: datetime, now: datetime) -> Due:
        """The ticks to enqueue at ``now``, given the first tick not yet handled.

        Ticks within :data:`GRACE` of ``now`` are on time and all enqueued. Older ones were
        missed while no relay ran; ``catch_up`` decides: ``"latest"`` enqueues the latest
        of them once, ``"none"`` none, ``"all"`` each (at most :data:`CATCH_UP_MAX`, the
        latest ones).
        """
        _check_aware(next_tick)
        wanted_missed = {"latest": 1, "none": 0, "all": CATCH_UP_MAX}[self.catch_up]
        on_time: list[datetime] = []
        missed: list[datetime] = []
        skipped = False
        for tick in self.ticks_back(now):
            if tick < next_tick:
                break
            if now - tick <= GRACE:
                on_time.append(tick)
            elif len(missed) < wanted_missed:
                missed.append(tick)
            else:
                skipped = True
                break
        return Due(tuple(sorted(missed + on_time)), self.next_after(now), skipped)


def idempotency_key(name: str, tick: datetime) -> str:
    """The job of a tick carries this key: the schedule and the tick, in UTC."""
    return f"schedule:{name}:{tick.astimezone(UTC).isoformat()}"


def tick_of(key: str | None) -> datetime | None:
    """The tick a job's idempotency key names, if a schedule enqueued the job, else None."""
    if key is None or not key.startswith("schedule:") or len(key) < len("schedule:x:") + 25:
        return None
    try:
        tick = datetime.fromisoformat(key[-25:])  # 2026-12-04T05:30:00+00:00
    except ValueError:
        return None
    return tick if key[-26] == ":" and tick.utcoffset() == timedelta(0) else None


def _check_name(name: object) -> None:
    if not isinstance(name, str):
        raise RegistryError(f"schedule name must be a str, not {type(name).__name__}")
    if not name or len(name) > NAME_MAX or not _NAME.fullmatch(name):
        raise RegistryError(
            f"schedule name {name[:40]!r} must be 1 to {NAME_MAX} letters, digits and "
            "_ . : / -, starting with a letter or digit"
        )


def _check_aware(instant: datetime) -> None:
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise ValueError(f"{instant!r} is a naive datetime; give it a time zone")


def _duration(every: timedelta) -> str:
    seconds = int(every.total_seconds())
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


__all__ = [
    "CATCH_UP_MAX",
    "CATCH_UP_POLICIES",
    "EPOCH",
    "GRACE",
    "CatchUp",
    "Due",
    "Schedule",
    "idempotency_key",
    "tick_of",
]
