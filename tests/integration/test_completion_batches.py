"""One outcome PostgreSQL refuses costs only its own job, never its batch-mates' completion.

The completer writes up to 500 outcomes in one transaction. A value no column takes (a NUL in
a note a target returned, say) failed that transaction, and every job of the batch kept its
lease, was rescued after it and ran again: 499 handlers run twice for one bad value.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

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


def claimed(db: sa.Engine, n: int) -> list[outbox.Job]:
    """``n`` jobs enqueued, then claimed by relay r1, in claim order."""
    with Session(db) as session:
        outbox.enqueue_many(session, [outbox.NewJob("t.batch", {"n": i}) for i in range(n)])
        session.commit()
    with db.connect() as conn:
        jobs = claim_batch(
            conn, queues=["default"], limit=n + 1, lease=timedelta(minutes=5), relay="r1",
            limits=AttemptLimits(default=5, types=("t.batch",)),
        )  # fmt: skip
    assert len(jobs) == n
    return jobs


def flushed(dsn: str, outcomes: list[Outcome]) -> Finished:
    """What relay r1's completer tells its book after writing ``outcomes`` as one batch."""
    book = Finished()
    fast = create_engine(dsn, isolation_level="AUTOCOMMIT")
    try:
        Completer(fast, "r1", outbox.Registry(), book)._flush(outcomes)  # type: ignore[arg-type]
    finally:
        fast.dispose()
    return book


def test_a_refused_outcome_leaves_its_batch_mates_completed(db: sa.Engine, dsn: str) -> None:
    jobs = claimed(db, 9)
    poison = jobs[4]
    book = flushed(dsn, [Outcome(j, 1.0, note="a\x00b" if j is poison else "ok") for j in jobs])
    for job in jobs:
        if job is poison:
            assert events(db, job.uuid) == ["enqueued", "claimed"]  # left to its lease
        else:
            assert events(db, job.uuid) == ["enqueued", "claimed", "succeeded"]
    assert book.lost == [poison.uuid]  # abandoned: the relay lets it go, its lease stays
    assert len(book.done) == 8


def test_a_lone_surrogate_in_one_outcome_costs_only_its_own_job(db: sa.Engine, dsn: str) -> None:
    """psycopg cannot even encode it (UnicodeEncodeError, before PostgreSQL sees anything)."""
    jobs = claimed(db, 4)
    book = flushed(dsn, [Outcome(job, 1.0, note="\ud800" if n == 0 else "ok")
                         for n, job in enumerate(jobs)])  # fmt: skip
    assert [len(events(db, job.uuid)) for job in jobs] == [2, 3, 3, 3]
    assert book.lost == [jobs[0].uuid]


class Refusing(Completer):
    """A completer whose writes fail as ``errors`` say, one per call, counted."""

    def __init__(self, errors: list[Exception]) -> None:
        super().__init__(None, "r1", outbox.Registry(), Finished())  # type: ignore[arg-type]
        self.errors, self.writes = errors, 0

    def _write(self, batch: list[Outcome]) -> list[Outcome]:
        self.writes += 1
        raise self.errors[min(self.writes, len(self.errors)) - 1]


def outcomes(n: int) -> list[Outcome]:
    made = [outbox.Job(
        uuid=uuid4(), type="t.x", queue="default", key=None, payload={}, attempt=1,
        max_attempts=3, enqueued_at=datetime.now(UTC), idempotency_key="k",
    ) for _ in range(n)]  # fmt: skip
    return [Outcome(job, 1.0) for job in made]


def test_an_error_every_half_would_meet_is_not_split() -> None:
    """A read-only standby, a missing column, a revoked privilege: splitting 500 outcomes
    would cost 999 statements and 500 log lines for the same error."""
    broken = sa.exc.ProgrammingError("UPDATE", {}, Exception("column does not exist"))
    completer = Refusing([broken])
    completer._flush(outcomes(500))
    assert completer.writes == 1
    assert len(completer._inflight.lost) == 500  # type: ignore[attr-defined]


def test_a_database_lost_while_splitting_abandons_the_rest_without_trying_it() -> None:
    """Each half would wait out the connection retries (a minute) again."""
    refused = sa.exc.DataError("UPDATE", {}, Exception("text cannot contain NUL"))
    gone = sa.exc.OperationalError("UPDATE", {}, Exception("connection refused"))
    completer = Refusing([refused, gone])
    completer._flush(outcomes(8))
    assert completer.writes == 2  # the batch, then its first half: the second is not tried
    assert len(completer._inflight.lost) == 8  # type: ignore[attr-defined]
