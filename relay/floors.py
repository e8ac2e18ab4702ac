"""Where claims start in the ready index while a long snapshot pins the database's xmin.

A claimed job leaves its entry in ``outbox_jobs_ready_idx`` (its row was pending there), and
a completed one leaves its row. Both are removed, or marked dead by the first scan that
passes them, once no transaction can still see them. A long transaction (a report's
REPEATABLE READ, a forgotten ``BEGIN``) can, so while it lasts every claim walks the entries of
every job claimed since it began: at 500 jobs/s for five minutes, 150,000 of them, and a
claim that took 0.2 ms takes 10.

The relay looks at the head of its queues every few seconds (``ready_head`` in sql/claim.sql:
the entries of claimed jobs a scan walks before the first ready one). When they are many,
each queue's claims start past its floor: the position (priority, run_at, id) of the last job
this relay claimed there. Nothing is lost: a job can become ready behind a floor (a retry, a
key's next job once its head completed, a commit that took longer than the jobs claimed
meanwhile, a more urgent priority), so a full claim runs at least every FULL_SCAN_EVERY
seconds, and at once after this relay finished a job that had a key or did not succeed.
When the head is clean again, the floors go.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
import structlog

from .sql import queries

READY_HEAD = sa.text(queries["ready_head"])
INDEX_ONLY = sa.text(queries["index_only"])
#: Seconds between two looks at the head of the queues.
LOOK_EVERY = 5.0
#: Entries of claimed jobs before the first ready one above which claims start past their
#: floors: a clean head has none (scans mark them dead as they pass); walking a thousand
#: takes a claim about 0.1 ms.
CLUTTERED = 1000
#: Seconds between two full claims while floors are in use: the longest a job that became
#: ready behind a floor waits.
FULL_SCAN_EVERY = 1.0

Position = tuple[int, datetime, int]
#: Before every job: the floor of a full claim.
LOWEST: Position = (-32768, datetime(1, 1, 2, tzinfo=UTC), 0)

log = structlog.get_logger("outbox.relay")


class Floors:
    """The floors of one relay process's claims (the producer thread's own)."""

    def __init__(self) -> None:
        self.active = False
        self._at: dict[str, Position] = {}
        self._look_at = 0.0  # when to look at the head again
        self._full_at = 0.0  # when the next full claim is due
        self._reordered = 0  # InFlight.reordered_total at the last claim
        self.looks = 0  # looks at the head so far

    def look_due(self) -> bool:
        return time.monotonic() >= self._look_at

    def look(self, connection: sa.Connection, queues: Sequence[str]) -> None:
        """Read the head of ``queues`` (every LOOK_EVERY seconds): floors while it is long."""
        self._look_at = time.monotonic() + LOOK_EVERY
        self.looks += 1
        connection.execute(INDEX_ONLY)
        [plan] = connection.execute(READY_HEAD, {"queues": list(queues)}).scalar_one()
        connection.commit()
        fetches = sum(int(node.get("Heap Fetches", 0)) for node in _nodes(plan["Plan"]))
        cluttered = fetches > CLUTTERED
        if cluttered != self.active:
            self.active = cluttered
            self._at.clear()
            if cluttered:
                log.info(
                    "claims start past the jobs claimed here: a long transaction keeps their "
                    "index entries from being removed",
                    entries=fetches,
                )  # fmt: skip
            else:
                log.info("claims start at the head of the queues again", entries=fetches)

    def params(self, queues: Sequence[str], reordered: int) -> dict[str, Any]:
        """The claim's floor parameters for ``queues``. ``reordered`` counts the jobs this
        relay finished that may have made a job ready behind a floor."""
        now = time.monotonic()
        if reordered != self._reordered or now >= self._full_at:
            self._reordered = reordered
            self._at.clear()
            self._full_at = now + FULL_SCAN_EVERY
        at = [self._at.get(q, LOWEST) if self.active else LOWEST for q in queues]
        return {
            "floor_priority": [p for p, _, _ in at],
            "floor_run_at": [r for _, r, _ in at],
            "floor_id": [i for _, _, i in at],
        }

    def advance(self, claimed: Mapping[str, Position]) -> None:
        """After a claim: each queue's floor moves to the last job claimed there."""
        if self.active:
            self._at.update(claimed)

    def wait(self, idle: float) -> float:
        """How long an idle producer may wait: no longer than the next full claim, while
        floors are in use (a job may be ready behind one)."""
        if not self.active:
            return idle
        return max(0.0, min(idle, self._full_at - time.monotonic()))


def _nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", ()):
        yield from _nodes(child)
