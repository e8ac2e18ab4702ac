"""Enqueue sends NOTIFY only while a relay is idle (relay/idle.py), and loses no wake-up for it.

Whether a notification was sent is read in order: after the enqueue commits, the test sends a
notification of its own, and PostgreSQL delivers notifications in commit order, so whatever
arrives before that marker is what the enqueue sent.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from outbox_relay import idle
from outbox_relay.idle import BUSY_CLAIMS, RETRY_FIRST, RETRY_MOST, IdleMark, Step
from outbox_relay.notify import CHANNEL
from sqlalchemy.orm import Session
from structlog.testing import capture_logs

import outbox
from outbox import locks
from outbox.database import libpq_dsn
from tests.integration.helpers import holding, idle_marks, relay_idle
from tests.integration.relay_harness import running_relay, wait_for

MARKER = "end of test's transaction"


@pytest.fixture
def listener(db: sa.Engine, dsn: str) -> Iterator[Callable[[], list[str]]]:
    """Returns the notifications sent since the last call (or since LISTEN)."""
    with psycopg.connect(libpq_dsn(dsn), autocommit=True) as listening:
        listening.execute(f"LISTEN {CHANNEL}")

        def sent() -> list[str]:
            with psycopg.connect(libpq_dsn(dsn), autocommit=True) as other:
                other.execute("SELECT pg_notify(%s, %s)", (CHANNEL, MARKER))
            found: list[str] = []
            for note in listening.notifies(timeout=10):
                if note.payload == MARKER:
                    return found
                found.append(note.payload)
            raise AssertionError("the marker notification never came")

        wait_for(lambda: idle_marks(db) == 0, what="relays of earlier tests to let their marks go")
        assert sent() == []
        yield sent


@pytest.fixture
def idle_relay(dsn: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    with relay_idle(dsn) as marked:
        yield marked


def mark(dsn: str) -> IdleMark:
    return IdleMark(libpq_dsn(dsn), application_name="test idle mark", options="")


ENQUEUES: dict[str, Callable[[Session], object]] = {
    "one job": lambda s: outbox.enqueue(s, "a.job", {}),
    "one job, a key": lambda s: outbox.enqueue(s, "a.job", {}, key="k"),
    "a batch": lambda s: outbox.enqueue_many(s, [outbox.NewJob("a.job", {}) for _ in range(3)]),
    "a large batch (COPY)": lambda s: outbox.enqueue_many(
        s, [outbox.NewJob("a.job", {"n": n}, queue=f"q{n % 2}") for n in range(600)]
    ),
}


@pytest.mark.parametrize("kind", ENQUEUES)
def test_enqueue_notifies_only_while_a_relay_is_idle(
    kind: str,
    db: sa.Engine,
    dsn: str,
    listener: Callable[[], list[str]],
) -> None:
    with Session(db) as session:
        ENQUEUES[kind](session)
        session.commit()
    assert listener() == [], "no relay is idle: nobody to wake"
    with relay_idle(dsn):
        with Session(db) as session:
            ENQUEUES[kind](session)
            session.commit()
        queues = {"default"} if "large" not in kind else {"q0", "q1"}
        assert set(listener()) == queues
    with Session(db) as session:
        ENQUEUES[kind](session)
        session.commit()
    assert listener() == [], "the idle relay's connection is gone, and its mark with it"


def test_a_rolled_back_enqueue_never_notifies(
    db: sa.Engine, listener: Callable[[], list[str]], idle_relay: object
) -> None:
    with Session(db) as session:
        outbox.enqueue(session, "a.job", {})
        session.rollback()
    assert listener() == []


def test_every_enqueue_of_a_transaction_after_the_mark_notifies(
    db: sa.Engine, dsn: str, listener: Callable[[], list[str]]
) -> None:
    """One statement looked before the relay was marked, the next after: the transaction
    notifies, for the second."""
    with Session(db) as session:
        outbox.enqueue(session, "a.job", {})
        with relay_idle(dsn):
            outbox.enqueue(session, "a.job", {}, queue="later")
            session.commit()
    assert listener() == ["later"]


def test_the_mark_is_confirmed_only_once_earlier_enqueues_have_ended(
    db: sa.Engine, dsn: str, listener: Callable[[], list[str]]
) -> None:
    relay = mark(dsn)
    try:
        with Session(db) as session:
            outbox.enqueue(session, "a.job", {})  # looks before the mark: no NOTIFY to come
            assert relay.enter() is Step.RETRY
            assert relay.held
            assert not relay.confirmed
            assert relay.retry_in(lambda: 60.0) <= RETRY_MOST
            assert relay.enter() is Step.RETRY, "still open"
            session.commit()
        assert listener() == []
        assert relay.enter() is Step.CLAIM_AGAIN, "ended: a claim now finds its job"
        assert relay.confirmed
        assert relay.enter() is Step.SLEEP
        with Session(db) as session:
            outbox.enqueue(session, "a.job", {})
            session.commit()
        assert listener() == ["default"]
    finally:
        relay.close()


def test_a_busy_relay_gives_the_mark_up_and_enqueue_stops_notifying(
    db: sa.Engine, dsn: str, listener: Callable[[], list[str]]
) -> None:
    relay = mark(dsn)
    try:
        assert relay.enter() is Step.CLAIM_AGAIN
        relay.claimed()  # a trickle: a job, then (enter) an empty claim
        assert relay.enter() is Step.SLEEP
        assert relay.held
        for _ in range(BUSY_CLAIMS - 1):
            relay.claimed()
        assert relay.held, "a few claims in a row that found jobs: still a trickle"
        relay.claimed()
        assert not relay.held, "a backlog: the relay claims again without being told"

        with Session(db) as session:
            outbox.enqueue(session, "a.job", {})
            session.commit()
        assert listener() == []
    finally:
        relay.close()


def test_a_lock_left_behind_by_an_enqueuer_makes_every_other_enqueue_notify(
    db: sa.Engine, dsn: str, listener: Callable[[], list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An enqueue cancelled between trying IDLE and releasing it (a window of microseconds)
    keeps IDLE exclusively until its session ends. Relays cannot mark themselves idle then,
    and poll, saying which session holds it; other sessions' enqueues find IDLE taken, and
    notify."""
    monkeypatch.setattr(idle, "REFUSED_WARN", 0.0)
    relay = mark(dsn)
    try:
        with holding(dsn, f"SELECT pg_advisory_lock{locks.IDLE}") as leaked, capture_logs() as logs:
            pid = leaked.info.backend_pid
            assert relay.enter() is Step.RETRY
            assert not relay.held
            assert relay.retry_in(lambda: 0.7) <= 0.7
            assert relay.enter() is Step.RETRY
            with Session(db) as session:
                outbox.enqueue(session, "a.job", {})
                session.commit()
            assert listener() == ["default"]
        warned = [e for e in logs if "held exclusively" in e["event"]]
        assert len(warned) == 1
        assert [s["pid"] for s in warned[0]["sessions"]] == [pid]
        wait_for(lambda: relay.enter() is not Step.RETRY, what="the mark, once the session is gone")
    finally:
        relay.close()


def test_a_lost_mark_is_taken_again(db: sa.Engine, dsn: str) -> None:
    relay = mark(dsn)
    try:
        assert relay.enter() is Step.CLAIM_AGAIN
        with db.connect() as conn:
            conn.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = 'test idle mark' AND datname = current_database()"
                )
            )
        relay.check()
        assert not relay.held, "the connection is gone: the mark with it"
        assert relay.enter() is Step.CLAIM_AGAIN, "taken again: claim once more"
        assert relay.held
    finally:
        relay.close()


def test_a_suspected_mark_taken_again_claims_once_more(
    db: sa.Engine, dsn: str, listener: Callable[[], list[str]]
) -> None:
    """The listener lost its connection (a restarted server?): the mark is dropped and taken
    again, and an enqueue that looked in between sent no NOTIFY, so the producer must claim
    once more, not sleep."""
    relay = mark(dsn)
    try:
        assert relay.enter() is Step.CLAIM_AGAIN
        assert relay.enter() is Step.SLEEP
        relay.suspect()
        assert relay.enter() is Step.CLAIM_AGAIN
        assert relay.enter() is Step.SLEEP
    finally:
        relay.close()


def test_steady_enqueue_traffic_does_not_keep_the_mark_unconfirmed(
    db: sa.Engine, dsn: str, listener: Callable[[], list[str]]
) -> None:
    """Only the transactions that looked before the mark are waited for: one that began
    after it (and notifies) does not hold the confirmation back, though it holds GATE."""
    relay = mark(dsn)
    try:
        with Session(db) as early, Session(db) as later:
            outbox.enqueue(early, "a.job", {}, queue="early")
            assert relay.enter() is Step.RETRY
            outbox.enqueue(later, "a.job", {}, queue="later")
            assert relay.enter() is Step.RETRY, "the early one is still open"
            early.commit()
            assert relay.enter() is Step.CLAIM_AGAIN, "the later one notifies: no need to wait"
            later.commit()
        assert listener() == ["later"]
    finally:
        relay.close()


def test_retries_start_short_again_after_the_mark_is_given_up(dsn: str, db: sa.Engine) -> None:
    relay = mark(dsn)
    try:
        with Session(db) as session:
            outbox.enqueue(session, "a.job", {})
            for _ in range(12):
                assert relay.enter() is Step.RETRY
            assert relay.retry_in(lambda: 30.0) == RETRY_MOST
            relay.leave()
            assert relay.retry_in(lambda: 30.0) <= 2 * RETRY_FIRST
            session.commit()
    finally:
        relay.close()


def test_the_mark_outlives_an_idle_session_timeout(
    db: sa.Engine, dsn: str, listener: Callable[[], list[str]]
) -> None:
    """Its connection is idle for as long as the relay is; the server's idle_session_timeout
    (here from startup options, as a server or role setting would give it) must not end it.
    Nor does the mark's wait for GATE depend on startup options, which a pooler may drop."""
    relay = IdleMark(
        libpq_dsn(dsn),
        application_name="test idle mark",
        options="-c idle_session_timeout=200 -c lock_timeout=0",
    )
    try:
        assert relay.enter() is Step.CLAIM_AGAIN
        time.sleep(0.6)  # idle three times as long as the timeout
        relay.check()
        assert relay.held
        with Session(db) as session:
            outbox.enqueue(session, "a.job", {})
            session.commit()
        assert listener() == ["default"]
        relay.leave()
        with Session(db) as session:
            outbox.enqueue(session, "a.job", {})
            started = time.monotonic()
            assert relay.enter() is Step.RETRY, "GATE waited for 5 ms, not without end"
            assert time.monotonic() - started < 5
            session.commit()
    finally:
        relay.close()


def test_a_job_enqueued_before_the_relay_went_idle_runs_soon_after_its_commit(
    db: sa.Engine, dsn: str
) -> None:
    """The race the gate closes: the enqueue statement runs while no relay is idle (so it
    sends no NOTIFY), and commits after the relay's last claim. The relay claims again every
    few milliseconds until that transaction has ended, not once a poll interval (30 s)."""
    ran = threading.Event()
    registry = outbox.Registry()
    registry.register("a.now", lambda job: ran.set())
    with Session(db) as session:
        outbox.enqueue(session, "a.now", {})
        with running_relay(registry, dsn, poll_interval=timedelta(seconds=30)) as worker:
            wait_for(lambda: worker.idle.held, what="the relay to mark itself idle")
            assert not worker.idle.confirmed, "the enqueue's transaction is still open"
            session.commit()
            committed = time.monotonic()
            assert ran.wait(10), "found by a claim within RETRY_MOST, not the 30 s poll"
            assert time.monotonic() - committed < 5
            wait_for(lambda: worker.idle.confirmed, what="the mark confirmed")


def test_an_idle_relay_keeps_its_mark_and_is_woken_at_once_with_one_claim_a_job(
    db: sa.Engine, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At a trickle each claim finds the one job that woke it, and comes back short: the
    relay sleeps then, instead of claiming again to find nothing (two claims a job, and a
    job whose notice came during the empty one waited for it: 0.4 ms at the median of a
    200 jobs/s run, more at the tail)."""
    done: list[float] = []
    registry = outbox.Registry()
    registry.register("a.now", lambda job: done.append(time.monotonic()))
    with running_relay(registry, dsn, poll_interval=timedelta(seconds=30)) as worker:
        wait_for(lambda: worker.idle.confirmed and worker.listener.connected.is_set(),
                 what="the relay marked idle and listening")  # fmt: skip
        claims: list[int] = []
        claim = worker._claim

        def counted(*args: Any, **kwargs: Any) -> list[outbox.Job]:
            jobs = claim(*args, **kwargs)
            claims.append(len(jobs))
            return jobs

        monkeypatch.setattr(worker, "_claim", counted)
        for n in range(10):
            with Session(db) as session:
                outbox.enqueue(session, "a.now", {})
                session.commit()
            wait_for(lambda n=n: len(done) == n + 1, timeout=10, what=f"job {n}, not the poll")
            wait_for(lambda n=n: len(claims) > n, timeout=10, what="the claim to return")
        assert sum(claims) == 10
        assert len(claims) <= 12, f"claims of {claims}: an empty claim after each job"
        assert worker.idle.held, "a trickle keeps the mark"
        assert worker.idle.confirmed


def test_a_short_claim_sleeps_at_once_only_under_a_confirmed_mark(dsn: str) -> None:
    """A claim that found fewer jobs than it asked for read the queue dry: under a confirmed
    mark every job enqueued since notifies, so the producer may sleep without an empty claim.
    Not before the mark is confirmed, nor once it is suspect or given up."""
    relay = mark(dsn)
    try:
        assert not relay.ran_dry(), "no mark yet: claim again, then enter()"
        assert relay.enter() is Step.CLAIM_AGAIN
        assert relay.ran_dry()
        for _ in range(BUSY_CLAIMS - 1):
            relay.claimed()
        assert relay.ran_dry(), "a short claim ends a run of full ones"
        for _ in range(BUSY_CLAIMS - 1):
            relay.claimed()
        assert relay.held, "the count started again at the short claim"
        relay.suspect()
        assert not relay.ran_dry(), "suspect: enter() must take the mark again first"
        assert relay.enter() is Step.CLAIM_AGAIN
        for _ in range(BUSY_CLAIMS):
            relay.claimed()
        assert not relay.held
        assert not relay.ran_dry(), "given up under a backlog"
    finally:
        relay.close()


def test_a_claim_short_only_because_a_queue_had_little_room_claims_again(
    dsn: str, db: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With per-queue limits a claim asks each queue for its free room: one that took all
    of its room may have more waiting, so the claim did not read the queues dry, however
    short it came back. A place that came free meanwhile (not from full, so no wake-up)
    is claimed at once, not after the poll interval."""
    gates = [threading.Event() for _ in range(6)]
    started: list[int] = []
    registry = outbox.Registry()

    @registry.handler("one.job", queue="one")
    def one(job: outbox.Job) -> None:
        started.append(job.payload["n"])
        gates[job.payload["n"]].wait(30)

    registry.register("two.job", lambda job: None, queue="two")
    with Session(db) as session:
        for n in range(6):
            outbox.enqueue(session, "one.job", {"n": n}, queue="one")
        session.commit()
    with running_relay(
        registry, dsn, queue_limits={"one": 2, "two": 2}, poll_interval=timedelta(seconds=30)
    ) as worker:
        try:
            wait_for(lambda: len(started) == 2 and worker.idle.confirmed,
                     what="queue one full, the relay marked idle")  # fmt: skip
            claim = worker._claim
            armed = threading.Event()

            def freeing_a_place_meanwhile(
                limit: int, queues: list[str], rooms: list[int] | None
            ) -> list[outbox.Job]:
                if armed.is_set() and "one" in queues:
                    armed.clear()
                    gates[1].set()  # queue one: 1 running -> 0, not from full: no wake-up
                    wait_for(lambda: (worker.inflight.rooms() or {}).get("one") == 2,
                             what="job 1 to end")  # fmt: skip
                return claim(limit, queues, rooms)

            monkeypatch.setattr(worker, "_claim", freeing_a_place_meanwhile)
            armed.set()
            gates[0].set()  # queue one: 2 running -> 1, from full: wakes the producer
            wait_for(lambda: len(started) == 4, timeout=10,
                     what="queue one's free places taken, not after the poll")  # fmt: skip
        finally:
            for gate in gates:  # before the relay stops, which waits for its handlers
                gate.set()
