"""Where claims start in the ready index while a long snapshot pins the database's xmin.

A claimed job leaves its entry in ``outbox_jobs_ready_idx`` (its row was pending there), and
a completed one leaves its row. Both are removed, or marked dead by the first scan that
passes them, once no transaction can still see them. A long transaction (a report's
REPEATABLE READ, a forgotten ``BEGIN``; in another database of the server too, once it has
written: its id holds back the xmin of every snapshot taken while it runs) can, so while
it lasts every claim walks the entries of every job claimed since it began: at 500 jobs/s
for five minutes, 150,000 of them, and a claim that took 0.2 ms takes 10.

A watcher thread (:class:`FloorWatch`) counts, every LOOK_EVERY seconds, the entries a scan
walks before the first ready job (``ready_head`` in sql/claim.sql). When they are many, each
queue's claims start past its floor: the position (priority, run_at, id) of the last job this
relay claimed there. Nothing is lost: a job can become ready behind a floor (a retry, a key's
next job once its head completed, a commit that took longer than the jobs claimed meanwhile, a
more urgent priority), so every CHECK_EVERY seconds the watcher looks behind the floors
(``ready_behind``) and, if such a job waits, the producer's next claim starts at the head;
it does so at once, too, after this relay finished a job that had a key or did not succeed.
Both reads walk the entries the floors skip, in the watcher's thread, never in the claims'.
When the head is clean again, the floors go.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
import structlog

from .service import Service
from .sql import queries

READY_HEAD = sa.text(queries["ready_head"])
INDEX_ONLY = sa.text(queries["index_only"])
READY_BEHIND = sa.text(queries["ready_behind"])
#: Seconds between two counts of the entries before the first ready job.
LOOK_EVERY = 5.0
#: Entries of claimed jobs before the first ready one above which claims start past their
#: floors. A scan marks the entries it passes dead once no transaction can see their rows, so a
#: clean head holds those of the last few seconds' claims; walking 10,000 takes a claim about
#: 0.6 ms.
CLUTTERED = 10_000
#: Seconds between two looks behind the floors: about the longest a job that became ready
#: behind one waits.
CHECK_EVERY = 1.0

Position = tuple[int, datetime, int]
#: Before every job: the floor of a claim from the head.
LOWEST: Position = (-32768, datetime(1, 1, 2, tzinfo=UTC), 0)

log = structlog.get_logger("outbox.relay")


class Floors:
    """The floors of one relay process's claims. The producer thread claims with them; the
    watcher thread turns them on and off and says when a job waits behind them."""

    def __init__(self) -> None:
        self.active = False
        #: Set by the watcher: a job is ready behind a floor, the next claim starts at the head.
        self.behind = threading.Event()
        self._at: dict[str, Position] = {}
        self._reordered = 0  # InFlight.reordered_total at the last claim
        self.looks = 0  # the watcher's counts of the head so far

    def params(self, queues: Sequence[str], reordered: int) -> dict[str, Any]:
        """The claim's floor parameters for ``queues``: from the head when floors are off, when
        the watcher found a job behind them, or when this relay finished a job that may have
        made one ready there (``reordered`` moved: InFlight.reordered_total)."""
        if not self.active or self.behind.is_set() or reordered != self._reordered:
            self._reordered = reordered
            self.behind.clear()
            return self.current(queues, from_head=True)
        return self.current(queues)

    def current(self, queues: Sequence[str], *, from_head: bool = False) -> dict[str, Any]:
        """Each queue's floor as it stands, as statement parameters."""
        at = self._at if self.active and not from_head else {}
        floors = [at.get(q, LOWEST) for q in queues]
        return {
            "floor_priority": [p for p, _, _ in floors],
            "floor_run_at": [r for _, r, _ in floors],
            "floor_id": [i for _, _, i in floors],
        }

    def advance(self, claimed: Mapping[str, Position]) -> None:
        """After a claim: each queue's floor moves up to the last job claimed there. A claim
        from the head that took only jobs behind a floor leaves it where it was: every job
        between was claimed before, or that claim would have taken it."""
        if self.active:
            for queue, position in claimed.items():
                if position > self._at.get(queue, LOWEST):
                    self._at[queue] = position

    def turn(self, active: bool) -> None:
        """The watcher's verdict on the head of the queues."""
        if active != self.active:
            self._at = {}
            self.active = active


class FloorWatch(Service):
    """The watcher of one relay process's floors (see the module's docstring)."""

    name = "floors"
    failure = "looking at the head of the queues failed; will try again"

    def __init__(
        self, engine: sa.Engine, floors: Floors, queues: Sequence[str], types: Sequence[str],
        wake: threading.Event,
    ) -> None:  # fmt: skip
        super().__init__(CHECK_EVERY, first_wait=CHECK_EVERY)
        self._engine = engine
        self._floors = floors
        self._queues = list(queues)
        self._types = list(types)
        self._wake = wake
        self._look_at = 0.0

    def tick(self) -> float:
        with self._engine.connect() as connection:
            if time.monotonic() >= self._look_at:
                self._look(connection)
            if self._floors.active and self._ready_behind(connection):
                self._floors.behind.set()
                self._wake.set()  # an idle producer claims it now
        return min(CHECK_EVERY, LOOK_EVERY)

    def _look(self, connection: sa.Connection) -> None:
        self._look_at = time.monotonic() + LOOK_EVERY
        connection.execute(INDEX_ONLY)
        [plan] = connection.execute(READY_HEAD, {"queues": self._queues}).scalar_one()
        connection.commit()
        self._floors.looks += 1
        entries = sum(int(node.get("Heap Fetches", 0)) for node in _nodes(plan["Plan"]))
        cluttered = entries > CLUTTERED
        if cluttered == self._floors.active:
            return
        self._floors.turn(cluttered)
        if cluttered:
            log.info(
                "claims start past the jobs claimed here: a long transaction keeps their "
                "index entries from being removed",
                entries=entries,
            )  # fmt: skip
        else:
            log.info("claims start at the head of the queues again", entries=entries)

    def _ready_behind(self, connection: sa.Connection) -> bool:
        params = {"queues": self._queues, "types": self._types}
        found = connection.execute(READY_BEHIND, {**params, **self._floors.current(self._queues)})
        behind = bool(found.scalar())
        connection.commit()
        return behind


def _nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", ()):
        yield from _nodes(child)
