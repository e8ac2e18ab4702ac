"""G5: an idempotency key enqueued twice within its retention window makes one job."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

import outbox
from outbox.bulk import COPY_THRESHOLD
from tests.integration.helpers import count, jobs


def enqueue(engine: sa.Engine, key: str, **options: object) -> outbox.Enqueued:
    with Session(engine) as session:
        handle = outbox.enqueue(session, "pay.capture", {"k": key}, idempotency_key=key, **options)  # type: ignore[arg-type]
        session.commit()
    return handle


def test_second_enqueue_is_reported_duplicate_and_creates_no_job(db: sa.Engine) -> None:
    first = enqueue(db, "charge-7")
    second = enqueue(db, "charge-7")
    assert first.duplicate is False
    assert second == outbox.Enqueued(first.uuid, duplicate=True)
    assert count(db, "outbox_jobs") == count(db, "outbox_history") == 1


def test_duplicate_within_one_transaction(db: sa.Engine) -> None:
    with Session(db) as session:
        a = outbox.enqueue(session, "x.y", {}, idempotency_key="same")
        b = outbox.enqueue(session, "x.y", {}, idempotency_key="same")
        session.commit()
    assert (b.uuid, b.duplicate) == (a.uuid, True)
    assert count(db, "outbox_jobs") == 1


@pytest.mark.parametrize("size", [4, COPY_THRESHOLD + 4], ids=["statement", "copy"])
def test_duplicates_within_one_batch_point_at_the_first(db: sa.Engine, size: int) -> None:
    batch = [outbox.NewJob("x.y", {"n": n}, idempotency_key=f"k{n % 4}") for n in range(size)]
    with Session(db) as session:
        handles = outbox.enqueue_many(session, batch)
        session.commit()
    assert [h.duplicate for h in handles[:4]] == [False] * 4
    assert all(h.duplicate for h in handles[4:])
    assert all(h.uuid == handles[i % 4].uuid for i, h in enumerate(handles))
    assert sorted(j.payload["n"] for j in jobs(db)) == [0, 1, 2, 3]


@pytest.mark.parametrize("size", [1, COPY_THRESHOLD], ids=["statement", "copy"])
def test_key_still_deduplicates_after_the_job_is_gone(db: sa.Engine, size: int) -> None:
    first = enqueue(db, "done-once")
    with db.begin() as conn:  # as when the job succeeded and left outbox_jobs
        conn.execute(sa.text("DELETE FROM outbox_jobs"))
    with Session(db) as session:
        [again, *_] = outbox.enqueue_many(
            session, [outbox.NewJob("x.y", {}, idempotency_key="done-once")] * size
        )
        session.commit()
    assert (again.uuid, again.duplicate) == (first.uuid, True)
    assert count(db, "outbox_jobs") == 0


def test_expired_key_enqueues_again(db: sa.Engine) -> None:
    first = enqueue(db, "old")
    with db.begin() as conn:
        conn.execute(sa.text("UPDATE outbox_idempotency SET expires_at = now() - interval '1s'"))
    second = enqueue(db, "old")
    assert second.duplicate is False
    assert second.uuid != first.uuid
    assert count(db, "outbox_jobs") == 2


def test_retention_window_comes_from_settings(db: sa.Engine) -> None:
    settings = outbox.Settings(idempotency_retention=timedelta(hours=3))
    enqueue(db, "short", settings=settings)
    with db.connect() as conn:
        window = conn.execute(
            sa.text("SELECT expires_at - created_at FROM outbox_idempotency")
        ).scalar_one()
    assert window == timedelta(hours=3)


def test_rolled_back_first_use_frees_the_key(db: sa.Engine) -> None:
    with Session(db) as session:
        outbox.enqueue(session, "x.y", {}, idempotency_key="retry-me")
        session.rollback()
    assert enqueue(db, "retry-me").duplicate is False


@pytest.mark.parametrize("first_commits", [True, False], ids=["commit", "rollback"])
def test_concurrent_same_key_waits_for_the_first_transaction(
    db: sa.Engine, first_commits: bool
) -> None:
    """The second enqueue blocks on the first's uncommitted key, then sees its outcome."""
    result: list[outbox.Enqueued] = []
    with Session(db) as first:
        mine = outbox.enqueue(first, "x.y", {}, idempotency_key="race")
        second = threading.Thread(target=lambda: result.append(enqueue(db, "race")))
        second.start()
        second.join(timeout=0.5)
        assert second.is_alive(), "the second enqueue should wait for the first transaction"
        first.commit() if first_commits else first.rollback()
    second.join(timeout=10)
    assert not second.is_alive()
    [theirs] = result
    assert theirs.duplicate is first_commits
    assert (theirs.uuid == mine.uuid) is first_commits
    assert count(db, "outbox_jobs") == 1
