"""The overview's last hour, minute by minute, from history: jobs succeeded, retried, dead.

A busy system appends millions of history rows an hour; counting them all on each refresh
would cost the database more than the console is worth. A minute that ended a while ago no
longer changes (a history row carries its transaction's start time, and the console's
statement timeout bounds how long a transaction that started then can still be running), so
each minute is counted once, kept, and only the newest minutes are asked for again.
"""

from __future__ import annotations

import dataclasses
import threading
from datetime import datetime, timedelta

import sqlalchemy as sa

from outbox.sql import queries

ACTIVITY = sa.text(queries["console_activity"])
OUTCOMES = ("succeeded", "retried", "dead")
#: Minutes shown.
WINDOW = 60
#: Minutes newer than this are asked for on every refresh: rows may still arrive in them.
SETTLING = timedelta(minutes=5)
MINUTE = timedelta(minutes=1)


@dataclasses.dataclass(frozen=True, slots=True)
class Minute:
    start: datetime
    succeeded: int = 0
    retried: int = 0
    dead: int = 0


class Activity:
    """Counts per minute over the last :data:`WINDOW` minutes, settled minutes kept."""

    def __init__(self) -> None:
        self._settled: dict[datetime, dict[str, int]] = {}
        self._lock = threading.Lock()

    def last_hour(self, connection: sa.Connection, now: datetime) -> list[Minute]:
        this_minute = now.replace(second=0, microsecond=0)
        first = this_minute - (WINDOW - 1) * MINUTE
        settled_before = (now - SETTLING).replace(second=0, microsecond=0)
        with self._lock:
            for start in [m for m in self._settled if m < first]:
                del self._settled[start]
            known = self._settled.copy()
        # ask from the first minute not yet settled in memory
        since = first
        while since < settled_before and since in known:
            since += MINUTE
        fresh: dict[datetime, dict[str, int]] = {}
        for row in connection.execute(ACTIVITY, {"since": since}):
            fresh.setdefault(row.minute, {})[row.event] = int(row.jobs)
        with self._lock:
            start = since
            while start < settled_before:
                self._settled[start] = fresh.get(start, {})
                start += MINUTE
            known = self._settled.copy()
        counts = {**known, **{m: c for m, c in fresh.items() if m >= settled_before}}
        return [
            Minute(minute, **counts.get(minute, {}))
            for minute in (first + i * MINUTE for i in range(WINDOW))
        ]
