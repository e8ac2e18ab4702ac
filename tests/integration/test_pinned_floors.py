"""While a long snapshot keeps claimed jobs' index entries from being removed, claims start
past the last job claimed (relay/floors.py), and no job is left behind: one that becomes
ready behind the floor still runs, keys keep their order, and once the snapshot ends claims
start at the head again."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from outbox_relay import floors
from outbox_relay.claim import seconds_to_next_run
from outbox_relay.floors import Floors
from sqlalchemy.orm import Session

import outbox
from tests.integration.relay_harness import live_jobs, running_relay, scalar, wait_for

#: Jobs enqueued at a time; the tests drain six such batches.
BATCH = 500
#: Three batches' entries: a pinned snapshot keeps all six batches' entries, a clean head at most
#: the last one's until the next scan marks them dead. The relay's own threshold is 20 claims of
#: 500.
CLUTTERED = 3 * BATCH


@pytest.fixture
def quick_looks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(floors, "LOOK_EVERY", 0.1)
    monkeypatch.setattr(floors, "CHECK_EVERY", 0.1)
    monkeypatch.setattr(floors, "CLUTTERED", CLUTTERED)


@pytest.fixture
def pinned(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A report's REPEATABLE READ transaction, its snapshot taken, left open."""
    with engine.connect() as connection:
        connection.execute(sa.text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
        connection.execute(sa.text("SELECT count(*) FROM outbox_history")).scalar()
        yield connection
        connection.rollback()


def enqueue(db: sa.Engine, jobs: list[outbox.NewJob]) -> None:
    with Session(db) as session, session.begin():
        outbox.enqueue_many(session, jobs)


def test_pinned_claims_start_past_the_claimed_jobs_and_leave_none_behind(
    db: sa.Engine,
    dsn: str,
    quick_looks: None,
    pinned: sa.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry = outbox.Registry()
    ran: list[tuple[str | None, int]] = []
    lock = threading.Lock()

    def record(job: outbox.Job) -> None:
        with lock:
            ran.append((job.key, job.payload["n"]))

    registry.register("pin.job", record)
    with running_relay(registry, dsn) as worker:
        # Enough jobs claimed under the snapshot to clutter the head of the index.
        for start in range(0, 6 * BATCH, BATCH):
            enqueue(db, [outbox.NewJob("pin.job", {"n": n}) for n in range(start, start + BATCH)])
            wait_for(lambda: live_jobs(db) == 0, what="the jobs")
        wait_for(lambda: worker.floors.active, what="claims to start past their floor")
        # From here the floors stay, whatever the head holds (it holds the jobs behind them
        # first): those jobs must come from the full claims alone.
        monkeypatch.setattr(floors, "CLUTTERED", -1)
        enqueue(db, [outbox.NewJob("pin.job", {"n": 3000})])
        wait_for(lambda: live_jobs(db) == 0, what="a job claimed past the floor")
        # A job ready behind the floor: its run_at is an hour before every job claimed.
        an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
        enqueue(db, [outbox.NewJob("pin.job", {"n": -1}, run_at=an_hour_ago)])
        wait_for(lambda: live_jobs(db) == 0, what="the job behind the floor (found by the watch)")
        # A key's jobs, each ready only once the one before it completed, behind the floor.
        enqueue(db, [outbox.NewJob("pin.job", {"n": n}, key="k") for n in range(5)])
        wait_for(lambda: live_jobs(db) == 0, what="the key's jobs")
        assert worker.floors.active
        monkeypatch.setattr(floors, "CLUTTERED", CLUTTERED)
        pinned.rollback()  # the report ends
        wait_for(lambda: not worker.floors.active, timeout=60, what="claims at the head again")
    assert (None, -1) in ran
    assert [n for key, n in ran if key == "k"] == [0, 1, 2, 3, 4]
    assert sorted(n for key, n in ran if key is None) == list(range(-1, 3001))
    claims = "SELECT count(*) FROM outbox_history WHERE event = 'claimed'"
    assert scalar(db, claims) == 3000 + 1 + 1 + 5


def test_a_clean_head_keeps_claims_at_the_head(db: sa.Engine, dsn: str, quick_looks: None) -> None:
    """Without a long transaction, the floors are off, and stay off once the head is clean.

    A transaction that wrote, in any database of the server, holds back the xmin of every
    snapshot taken while it runs, this database's too: another test's (a relay stopped
    mid-job) can keep the claimed jobs' entries for a few seconds, and the floors with them.
    """
    registry = outbox.Registry()
    registry.register("pin.job", lambda job: None)
    with running_relay(registry, dsn) as worker:
        for start in range(0, 6 * BATCH, BATCH):
            enqueue(db, [outbox.NewJob("pin.job", {"n": n}) for n in range(start, start + BATCH)])
            wait_for(lambda: live_jobs(db) == 0, what="the jobs")
        wait_for(lambda: not worker.floors.active, timeout=60, what="claims at the head")
        # No job comes after: the head holds no more entries than that look counted.
        looks = worker.floors.looks
        wait_for(lambda: worker.floors.looks >= looks + 3, what="looks at the head")
        assert not worker.floors.active


def test_the_next_scheduled_job_is_read_past_the_floors(db: sa.Engine) -> None:
    enqueue(db, [outbox.NewJob("pin.job", {"n": 1}, delay=timedelta(minutes=1))])
    run_at = scalar(db, "SELECT run_at FROM outbox_jobs")
    ahead, behind = Floors(), Floors()
    ahead.turn(True)
    behind.turn(True)
    behind.advance({"default": (0, run_at + timedelta(seconds=1), 0)})
    with db.connect() as connection:
        assert seconds_to_next_run(connection, ["default"], ["pin.job"]) == pytest.approx(60, abs=5)
        due_in = seconds_to_next_run(
            connection, ["default"], ["pin.job"], ahead.current(["default"])
        )
        assert due_in == pytest.approx(60, abs=5)
        # Behind the floor: not seen past it (the full claim each second finds such a job).
        assert (
            seconds_to_next_run(connection, ["default"], ["pin.job"], behind.current(["default"]))
            is None
        )
        assert (
            seconds_to_next_run(connection, ["other"], ["pin.job"], ahead.current(["other"]))
            is None
        )
