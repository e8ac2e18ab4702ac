"""The overview's last hour, minute by minute, from history: jobs succeeded, retried, dead.

A busy system appends millions of history rows an hour; counting them all on each refresh
would cost the database more than the console is worth. So the console counts the window
once, keeps the counts of every transaction that has ended, and afterwards asks only for the
rows of transactions that had not ended at its last count: those the digest chain calls
sealable, by the same rule (outbox/audit/seal.py). A row's transaction id, not its time, says
whether it can still appear: a row carries its transaction's start (``at`` is ``now()``), and
a session handler's history rows are written by a transaction that lasted as long as the
handler (minutes, up to its timeout), so a minute of ``at`` is never closed by the clock.
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
MINUTE = timedelta(minutes=1)

Counts = dict[datetime, dict[str, int]]


@dataclasses.dataclass(frozen=True, slots=True)
class Minute:
    start: datetime
    succeeded: int = 0
    retried: int = 0
    dead: int = 0


class Activity:
    """Counts per minute over the last :data:`WINDOW` minutes; those of ended transactions
    kept, the rest asked for on each refresh."""

    def __init__(self) -> None:
        #: Counts of the rows of every transaction below ``_after_xid`` since ``_first``.
        self._final: Counts = {}
        self._after_xid = 0
        self._first: datetime | None = None
        # One count at a time: a second viewer waits for the first one's count rather than
        # read the same rows again (the first count reads the whole window).
        self._lock = threading.Lock()

    def last_hour(self, connection: sa.Connection, now: datetime) -> list[Minute]:
        this_minute = now.replace(second=0, microsecond=0)
        first = this_minute - (WINDOW - 1) * MINUTE
        with self._lock:
            if self._first is None or first < self._first:  # new, or the clock went back
                self._final, self._after_xid = {}, 0
            self._first = first
            for start in [m for m in self._final if m < first]:
                del self._final[start]
            rows = connection.execute(
                ACTIVITY, {"since": first, "after_xid": self._after_xid}
            ).all()
            open_: Counts = {}
            for row in rows:
                if row.minute is None:
                    continue
                counts = (self._final if row.final else open_).setdefault(row.minute, {})
                counts[row.event] = counts.get(row.event, 0) + int(row.jobs)
            if rows:
                self._after_xid = max(self._after_xid, int(rows[0].horizon))
            shown = {minute: dict(counts) for minute, counts in self._final.items()}
        for minute, counts in open_.items():
            into = shown.setdefault(minute, {})
            for event, jobs in counts.items():
                into[event] = into.get(event, 0) + jobs
        return [
            Minute(minute, **shown.get(minute, {}))
            for minute in (first + i * MINUTE for i in range(WINDOW))
        ]
