"""One outcome PostgreSQL refuses costs only its own job, never its batch-mates' completion.

The completer writes up to 500 outcomes in one transaction. A value no column takes (a NUL in
a note a target returned, say) failed that transaction, and every job of the batch kept its
lease, was rescued after it and ran again: 499 handlers run twice for one bad value.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from outbox_relay.claim import AttemptLimits, claim_batch
from outbox_relay.complete import Completer
from outbox_relay.execute import Outcome
from sqlalchemy.orm import Session

import outbox
from outbox.database import create_engine
from tests.integration.relay_harness import events


class Finished:
    """The completer's in-flight book, reduced to what it is told."""

    def __init__(self) -> None:
        self.done: list[Any] = []
        self.lost: list[Any] = []

    def finished(self, done: list[Outcome], lost: list[Outcome]) -> None:
        self.done += [o.job.uuid for o in done]
        self.lost += [o.job.uuid for o in lost]


def test_a_refused_outcome_leaves_its_batch_mates_completed(db: sa.Engine, dsn: str) -> None:
    with Session(db) as session:
        outbox.enqueue_many(session, [outbox.NewJob("t.batch", {"n": n}) for n in range(9)])
        session.commit()
    with db.connect() as conn:
        jobs = claim_batch(
            conn, queues=["default"], limit=10, lease=timedelta(minutes=5), relay="r1",
            limits=AttemptLimits(default=5, types=("t.batch",)),
        )  # fmt: skip
    assert len(jobs) == 9
    poison = jobs[4]
    outcomes = [Outcome(job, 1.0, note="a\x00b" if job is poison else "ok") for job in jobs]
    book = Finished()
    fast = create_engine(dsn, isolation_level="AUTOCOMMIT")
    try:
        Completer(fast, "r1", outbox.Registry(), book)._flush(outcomes)  # type: ignore[arg-type]
    finally:
        fast.dispose()
    for job in jobs:
        if job is poison:
            assert events(db, job.uuid) == ["enqueued", "claimed"]  # left to its lease
        else:
            assert events(db, job.uuid) == ["enqueued", "claimed", "succeeded"]
    assert book.lost == [poison.uuid]  # abandoned: the relay lets it go, its lease stays
    assert len(book.done) == 8
