"""A handler's timeout bounds that handler, and only its own job pays for it (G6)."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

import outbox
from tests.integration.relay_harness import events, live_jobs, running_relay, scalar, wait_for


def enqueue(engine: sa.Engine, jobs: list[outbox.NewJob]) -> list[outbox.Enqueued]:
    with Session(engine) as session:
        handles = outbox.enqueue_many(session, jobs)
        session.commit()
    return handles


def test_a_hung_session_handler_fails_alone_and_its_neighbours_are_not_charged(
    db: sa.Engine, dsn: str
) -> None:
    release = threading.Event()
    registry = outbox.Registry()

    @registry.handler("s.quick", timeout=1)
    def quick(job: outbox.Job, session: Session) -> None:
        session.execute(sa.text("SELECT 1"))
        if job.payload.get("hang"):
            release.wait(60)  # past its timeout of 1 s

    @registry.handler("s.patient", timeout=30)
    def patient(job: outbox.Job, session: Session) -> None:
        session.execute(sa.text("SELECT 1"))

    jobs = [outbox.NewJob("s.quick", {"n": n}) for n in range(6)]
    jobs.insert(2, outbox.NewJob("s.quick", {"hang": True}, max_attempts=1))
    jobs += [outbox.NewJob("s.patient", {"n": n}) for n in range(4)]
    handles = enqueue(db, jobs)
    hung = handles[2].uuid
    try:
        with running_relay(registry, dsn, concurrency=2):
            # Before its idle-transaction timeout (timeout + 5 s) or a lease could end it.
            wait_for(lambda: live_jobs(db) == 1, timeout=4, what="every other job to succeed")
            wait_for(lambda: scalar(db, "SELECT state FROM outbox_jobs") == "dead", timeout=5,
                     what="the hung job to fail on its own timeout")  # fmt: skip
    finally:
        release.set()
    for handle in handles:
        if handle.uuid != hung:
            assert events(db, handle.uuid) == ["enqueued", "claimed", "succeeded"]
    assert events(db, hung) == ["enqueued", "claimed", "failed", "dead"]
    assert "past its timeout of 1" in scalar(db, "SELECT last_error FROM outbox_jobs")


def test_a_job_rescued_while_its_handler_still_runs_here_never_runs_beside_itself(
    db: sa.Engine, dsn: str
) -> None:
    release = threading.Event()
    guard = threading.Lock()
    calls = {"now": 0, "most": 0, "total": 0}
    registry = outbox.Registry()

    @registry.handler("p.slow", timeout=30)
    def slow(job: outbox.Job) -> None:
        with guard:
            calls["now"] += 1
            calls["total"] += 1
            calls["most"] = max(calls["most"], calls["now"])
        try:
            release.wait(20)
        finally:
            with guard:
                calls["now"] -= 1

    [handle] = enqueue(db, [outbox.NewJob("p.slow", {})])
    try:
        with running_relay(registry, dsn):
            wait_for(lambda: calls["total"] == 1, what="the handler to start")
            # Its lease runs out under it (as after a database outage that stopped the
            # heartbeat), and this relay's own rescuer gives the job back.
            with db.begin() as conn:
                conn.execute(
                    sa.text("UPDATE outbox_jobs SET lease_expires_at = now() - interval '1s'")
                )
            wait_for(lambda: "rescued" in events(db, handle.uuid), what="the rescue")
            time.sleep(2.5)  # the window observed: more than two looks for isolated jobs
            assert calls["most"] == 1
            release.set()
            wait_for(lambda: live_jobs(db) == 0, what="the job to complete")
    finally:
        release.set()
    # The first run's completion met its fence; the job then ran again, alone.
    assert calls == {"now": 0, "most": 1, "total": 2}
    assert events(db, handle.uuid) == ["enqueued", "claimed", "rescued", "claimed", "succeeded"]


def test_session_handlers_may_have_a_timeout_longer_than_postgresql_can_set(
    db: sa.Engine, dsn: str
) -> None:
    """statement_timeout takes at most 2,147,483,647 ms (24.8 days). A handler's timeout of
    30 days (or a relay's OUTBOX_HANDLER_TIMEOUT=30d) made SET LOCAL fail, and every session
    job of it stayed running, its completion abandoned."""
    registry = outbox.Registry()

    @registry.handler("s.month", timeout=30 * 86400)
    def month(job: outbox.Job, session: Session) -> None:
        session.execute(sa.text("SELECT 1"))

    @registry.handler("s.default")
    def default(job: outbox.Job, session: Session) -> None:
        session.execute(sa.text("SELECT 1"))

    handles = enqueue(db, [outbox.NewJob("s.month", {}), outbox.NewJob("s.default", {})])
    with running_relay(registry, dsn, handler_timeout=timedelta(days=40)):
        wait_for(lambda: live_jobs(db) == 0, what="both session jobs to succeed")
    for handle in handles:
        assert events(db, handle.uuid) == ["enqueued", "claimed", "succeeded"]
