"""The relay in-process against a real database: G2, G3, G4, G6 and G7 as they are promised."""

from __future__ import annotations

import re
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
import tenacity
from outbox_relay import complete, execute
from outbox_relay.claim import AttemptLimits, claim_batch, claim_isolated
from outbox_relay.rescue import rescue_expired
from outbox_relay.worker import Worker
from sqlalchemy.orm import Session

import outbox
import outbox.operator
from tests.integration.relay_harness import (
    FAST,
    events,
    live_jobs,
    running_relay,
    scalar,
    wait_for,
)

#: Claims by hand take the type the tests enqueue: a relay claims only types it can run.
A_B = AttemptLimits(default=5, types=("a.b",))


def enqueue(engine: sa.Engine, jobs: list[outbox.NewJob]) -> list[outbox.Enqueued]:
    with Session(engine) as session:
        handles = outbox.enqueue_many(session, jobs)
        session.commit()
    return handles


@pytest.fixture
def effects(db: sa.Engine) -> sa.Engine:
    with db.begin() as conn:
        conn.execute(sa.text("DROP TABLE IF EXISTS effects"))
        conn.execute(
            sa.text(
                "CREATE TABLE effects (job uuid, note text, "
                "at timestamptz DEFAULT clock_timestamp())"
            )
        )
    return db


def test_succeeded_job_leaves_the_table_with_its_history(db: sa.Engine, dsn: str) -> None:
    ran: list[outbox.Job] = []
    registry = outbox.Registry()
    registry.register("a.ok", ran.append)
    [handle] = enqueue(db, [outbox.NewJob("a.ok", {"n": 1}, idempotency_key="idem-1")])
    with running_relay(registry, dsn):
        wait_for(lambda: live_jobs(db) == 0, what="the job to complete")
    assert events(db, handle.uuid) == ["enqueued", "claimed", "succeeded"]
    [job] = ran
    assert (job.uuid, job.payload, job.attempt, job.idempotency_key) == (
        handle.uuid,
        {"n": 1},
        1,
        "idem-1",
    )


def test_failing_job_retries_with_backoff_then_dies_with_every_error(
    db: sa.Engine, dsn: str
) -> None:
    attempts: list[int] = []
    registry = outbox.Registry()

    @registry.handler("a.fails", max_attempts=3, retry=tenacity.wait_fixed(0.1))
    def fails(job: outbox.Job) -> None:
        attempts.append(job.attempt)
        raise RuntimeError(f"boom {job.attempt}")

    [handle] = enqueue(db, [outbox.NewJob("a.fails", {})])
    with running_relay(registry, dsn):
        wait_for(lambda: scalar(db, "SELECT state FROM outbox_jobs") == "dead", what="dead")
    assert attempts == [1, 2, 3]
    assert events(db, handle.uuid) == [
        "enqueued", "claimed", "failed", "retried", "claimed", "failed", "retried",
        "claimed", "failed", "dead",
    ]  # fmt: skip
    with db.connect() as conn:
        errors = conn.execute(sa.text(
            "SELECT error->>'message', error->>'type' FROM outbox_history "
            "WHERE event = 'failed' ORDER BY id"
        )).all()  # fmt: skip
        retried_at = conn.execute(sa.text(
            "SELECT run_at - at FROM outbox_history WHERE event = 'retried' ORDER BY id"
        )).scalars().all()  # fmt: skip
    assert errors == [(f"boom {n}", "builtins.RuntimeError") for n in (1, 2, 3)]
    assert all(timedelta(0) < wait <= timedelta(seconds=1) for wait in retried_at)


@pytest.mark.parametrize(
    "error", [outbox.InvalidPayload("no amount"), outbox.PermanentFailure("account closed")]
)
def test_permanent_failure_ends_dead_at_once(db: sa.Engine, dsn: str, error: Exception) -> None:
    registry = outbox.Registry()

    @registry.handler("a.reject", max_attempts=10)
    def reject(job: outbox.Job) -> None:
        raise error

    [handle] = enqueue(db, [outbox.NewJob("a.reject", {})])
    with running_relay(registry, dsn):
        wait_for(lambda: scalar(db, "SELECT state FROM outbox_jobs") == "dead", what="dead")
    assert events(db, handle.uuid) == ["enqueued", "claimed", "failed", "dead"]
    assert scalar(db, "SELECT last_error FROM outbox_jobs") == str(error)


def test_a_claimed_job_whose_type_has_no_handler_ends_dead_with_a_clear_error(
    db: sa.Engine, dsn: str
) -> None:
    """Defence only: a relay claims just the types it has handlers for (rolling deploys,
    tests/integration/test_rolling_deploys.py). Should a job of another type reach it anyway,
    it fails for good with a clear error; it never runs."""
    registry = outbox.Registry()
    registry.register("a.known", lambda job: None)
    enqueue(db, [outbox.NewJob("a.unknown", {})])
    worker = Worker(registry, dsn, outbox.Settings(dsn=dsn, **FAST))
    worker._limits = AttemptLimits(default=5, types=("a.known", "a.unknown"))  # claims it
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: scalar(db, "SELECT state FROM outbox_jobs") == "dead", what="dead")
    finally:
        worker.stop()
        thread.join(timeout=30)
    assert "no handler is registered for job type 'a.unknown'" in scalar(
        db, "SELECT last_error FROM outbox_jobs"
    )


def test_session_handler_writes_commit_with_completion_and_failures_undo_only_their_own(
    effects: sa.Engine, dsn: str
) -> None:
    registry = outbox.Registry()

    @registry.handler("a.write", max_attempts=1)
    def write(job: outbox.Job, session: Session) -> None:
        session.execute(
            sa.text("INSERT INTO effects (job, note) VALUES (:u, 'x')"), {"u": job.uuid}
        )
        if job.payload["fail"]:
            raise ValueError("after writing")

    handles = enqueue(effects, [outbox.NewJob("a.write", {"fail": n % 3 == 0}) for n in range(12)])
    with running_relay(registry, dsn):
        wait_for(
            lambda: (
                scalar(effects, "SELECT count(*) FROM outbox_jobs WHERE state = 'running'") == 0
                and scalar(effects, "SELECT count(*) FROM outbox_jobs") == 4
            ),
            what="completion",
        )
    with effects.connect() as conn:
        written = set(conn.execute(sa.text("SELECT job FROM effects")).scalars())
    assert written == {h.uuid for n, h in enumerate(handles) if n % 3}


def test_completion_of_a_job_whose_lease_was_lost_records_nothing(db: sa.Engine) -> None:
    registry = outbox.Registry()
    registry.register("a.b", lambda job: None)
    enqueue(db, [outbox.NewJob("a.b", {})])
    with db.connect() as conn:
        [job] = claim_batch(conn, queues=["default"], limit=1, lease=timedelta(seconds=30),
                            relay="stale", limits=A_B)  # fmt: skip
    with db.begin() as conn:  # another relay took it over after the lease expired
        conn.execute(sa.text("UPDATE outbox_jobs SET relay = 'fresh', attempt = attempt + 1"))
    with db.connect() as conn:
        lost = complete.complete(conn, "stale", [execute.Outcome(job, 1.0)], registry)
    assert [o.job.uuid for o in lost] == [job.uuid]
    assert live_jobs(db) == 1
    assert events(db, job.uuid) == ["enqueued", "claimed"]


def test_session_handler_of_a_lost_job_never_runs(effects: sa.Engine) -> None:
    calls: list[Any] = []
    registry = outbox.Registry()
    handler = registry.register("a.b", lambda job, session: calls.append(job))
    enqueue(effects, [outbox.NewJob("a.b", {})])
    with effects.connect() as conn:
        [job] = claim_batch(conn, queues=["default"], limit=1, lease=timedelta(seconds=30),
                            relay="stale", limits=A_B)  # fmt: skip
    with effects.begin() as conn:
        conn.execute(sa.text("UPDATE outbox_jobs SET relay = 'fresh'"))
    with effects.connect() as conn:
        outcomes, lost, _ = complete.run_in_transaction(
            conn, "stale", [(handler, job)], registry, 5000
        )
    assert (outcomes, [j.uuid for j in lost], calls) == ([], [job.uuid], [])


def test_jobs_of_one_key_run_one_at_a_time_in_order(db: sa.Engine, dsn: str) -> None:
    order: list[tuple[str, int]] = []
    active: dict[str, int] = {}
    guard = threading.Lock()
    overlaps: list[str] = []
    registry = outbox.Registry()

    @registry.handler("a.ordered")
    def ordered(job: outbox.Job) -> None:
        assert job.key is not None
        with guard:
            active[job.key] = active.get(job.key, 0) + 1
            if active[job.key] > 1:
                overlaps.append(job.key)
        time.sleep(0.002)
        with guard:
            active[job.key] -= 1
            order.append((job.key, job.payload["seq"]))

    keys = [f"k{n}" for n in range(4)]
    enqueue(db, [outbox.NewJob("a.ordered", {"seq": s}, key=k) for s in range(25) for k in keys])
    with running_relay(registry, dsn, concurrency=8):
        wait_for(lambda: live_jobs(db) == 0, timeout=30, what="all jobs")
    assert not overlaps
    for key in keys:
        assert [s for k, s in order if k == key] == list(range(25))


def test_dead_job_blocks_its_key_until_an_operator_cancels_it(db: sa.Engine, dsn: str) -> None:
    ran: list[int] = []
    registry = outbox.Registry()

    @registry.handler("a.k", max_attempts=1)
    def handler(job: outbox.Job) -> None:
        if job.payload["seq"] == 0:
            raise RuntimeError("first one fails")
        ran.append(job.payload["seq"])

    enqueue(db, [outbox.NewJob("a.k", {"seq": s}, key="blocked") for s in range(3)])
    with running_relay(registry, dsn):
        wait_for(lambda: scalar(db, "SELECT count(*) FROM outbox_jobs WHERE state = 'dead'") == 1,
                 what="the head to die")  # fmt: skip
        time.sleep(0.5)  # several claim rounds: nothing behind the dead head may run
        assert ran == []
        with db.connect() as conn:
            dead = conn.execute(
                sa.text("SELECT uuid FROM outbox_jobs WHERE state = 'dead'")
            ).scalar()
            outbox.operator.cancel(conn, [dead], actor="ops", reason="refunded by hand")
            conn.commit()
        wait_for(lambda: live_jobs(db) == 0, what="the key to drain once unblocked")
    assert ran == [1, 2]


def test_scheduled_job_runs_when_due_not_before(db: sa.Engine, dsn: str) -> None:
    ran_at: list[datetime] = []
    registry = outbox.Registry()
    registry.register("a.later", lambda job: ran_at.append(datetime.now(UTC)))
    due = datetime.now(UTC) + timedelta(seconds=1.5)
    enqueue(db, [outbox.NewJob("a.later", {}, run_at=due)])
    with running_relay(registry, dsn, poll_interval=timedelta(seconds=30)):
        wait_for(lambda: ran_at, timeout=10, what="the scheduled job")
    assert ran_at[0] >= due
    assert ran_at[0] - due < timedelta(seconds=10)  # well before the 30s poll would find it


def test_idle_relay_is_woken_by_the_enqueue_not_the_poll(db: sa.Engine, dsn: str) -> None:
    ran = threading.Event()
    registry = outbox.Registry()
    registry.register("a.now", lambda job: ran.set())
    with running_relay(registry, dsn, poll_interval=timedelta(seconds=60)) as worker:
        wait_for(worker.listener.connected.is_set, what="LISTEN")
        time.sleep(0.3)  # let the relay go idle
        enqueue(db, [outbox.NewJob("a.now", {})])
        assert ran.wait(15), "a notification should wake the relay long before its 60s poll"


def test_expired_lease_is_given_back_then_charged_alone_until_dead(db: sa.Engine) -> None:
    registry = outbox.Registry()
    registry.register("a.crash", lambda job: None, max_attempts=2)
    [handle] = enqueue(db, [outbox.NewJob("a.crash", {})])
    claims = {"queues": ["default"], "lease": timedelta(seconds=30), "relay": "gone",
              "limits": AttemptLimits.of(registry, default=5)}  # fmt: skip

    def expire_and_rescue() -> None:
        with db.begin() as conn:
            conn.execute(sa.text("UPDATE outbox_jobs SET lease_expires_at = now() - interval '1s'"))
        with db.connect() as conn:
            assert rescue_expired(conn) >= 1

    with db.connect() as conn:
        assert len(claim_batch(conn, limit=10, **claims)) == 1
    expire_and_rescue()
    # Claimed with others, so not to blame: the attempt is given back, and it runs alone now.
    assert scalar(db, "SELECT (state, attempt, isolated)::text FROM outbox_jobs") == "(pending,0,t)"
    with db.connect() as conn:
        assert claim_batch(conn, limit=10, **claims) == []
    for attempt, expected in ((1, "pending"), (2, "dead")):
        with db.connect() as conn:
            job = claim_isolated(conn, **claims)
        assert job is not None
        assert job.attempt == attempt
        expire_and_rescue()
        assert scalar(db, "SELECT state FROM outbox_jobs") == expected
    assert events(db, handle.uuid) == [
        "enqueued",
        "claimed",
        "rescued",
        "claimed",
        "rescued",
        "claimed",
        "rescued",
        "dead",
    ]


def test_the_attempt_limit_is_settled_by_the_first_claim_and_kept_by_every_rescuer(
    db: sa.Engine,
) -> None:
    # Mid-deploy, relays run different registries. The limit the claiming relay settled on
    # (the handler's 2) stays the job's: a rescuer that has no handler for the type, and a
    # default of 25, still ends it dead after 2 crashes of its own.
    registry = outbox.Registry()
    registry.register("a.crash", lambda job: None, max_attempts=2)
    [handle] = enqueue(db, [outbox.NewJob("a.crash", {})])
    with db.begin() as conn:
        conn.execute(sa.text("UPDATE outbox_jobs SET isolated = true"))  # runs alone: charged
    claims = {"queues": ["default"], "lease": timedelta(seconds=30), "relay": "r1",
              "limits": AttemptLimits.of(registry, default=25)}  # fmt: skip
    for expected in ("pending", "dead"):
        with db.connect() as conn:
            job = claim_isolated(conn, **claims)
        assert job is not None
        assert job.max_attempts == 2
        assert scalar(db, "SELECT max_attempts FROM outbox_jobs") == 2
        with db.begin() as conn:
            conn.execute(sa.text("UPDATE outbox_jobs SET lease_expires_at = now() - interval '1s'"))
        with db.connect() as conn:
            assert rescue_expired(conn) == 1
        assert scalar(db, "SELECT state FROM outbox_jobs") == expected
    assert events(db, handle.uuid)[-1] == "dead"


def test_a_job_enqueued_with_its_own_limit_keeps_it_and_others_take_the_default(
    db: sa.Engine,
) -> None:
    enqueue(db, [outbox.NewJob("a.own", {}, max_attempts=7), outbox.NewJob("a.other", {})])
    # a.own's handler sets 3, a.other's none: the job's own 7, then the default.
    limits = AttemptLimits(default=25, types=("a.own", "a.other"), limits=(3, None))
    with db.connect() as conn:
        jobs = claim_batch(conn, queues=["default"], limit=10, lease=timedelta(seconds=30),
                           relay="r1", limits=limits)  # fmt: skip
    assert {job.type: job.max_attempts for job in jobs} == {"a.own": 7, "a.other": 25}


def test_handler_past_its_timeout_fails_and_is_retried(db: sa.Engine, dsn: str) -> None:
    release = threading.Event()
    registry = outbox.Registry()

    @registry.handler("a.slow", timeout=0.3, max_attempts=1)
    def slow(job: outbox.Job) -> None:
        release.wait(10)

    enqueue(db, [outbox.NewJob("a.slow", {})])
    with running_relay(registry, dsn):
        wait_for(lambda: scalar(db, "SELECT state FROM outbox_jobs") == "dead", what="timeout")
        release.set()
    assert "past its timeout" in scalar(db, "SELECT last_error FROM outbox_jobs")


def test_stop_releases_unstarted_jobs_and_lets_running_ones_finish(db: sa.Engine, dsn: str) -> None:
    started, finish = threading.Event(), threading.Event()
    registry = outbox.Registry()

    @registry.handler("a.hold")
    def hold(job: outbox.Job) -> None:
        started.set()
        finish.wait(10)

    enqueue(db, [outbox.NewJob("a.hold", {"n": n}) for n in range(5)])
    with running_relay(registry, dsn, concurrency=1, claim_batch=5) as worker:
        assert started.wait(10)
        threading.Timer(0.5, finish.set).start()
        worker.stop()
        assert worker.wait_stopped(15)
    assert scalar(db, "SELECT count(*) FROM outbox_jobs WHERE state = 'running'") == 0
    assert scalar(db, "SELECT count(*) FROM outbox_history WHERE event = 'succeeded'") == 1
    assert (
        scalar(db, "SELECT count(*) FROM outbox_jobs WHERE state = 'pending' AND attempt = 0") == 4
    )


def plans(conn: sa.Connection, statement: sa.TextClause, params: dict[str, Any]) -> list[str]:
    """The plans of ``statement``: the one PostgreSQL makes for these values, and the
    generic one it keeps for every execution, as the relay's claim and completion
    connections ask for (``plan_cache_mode = force_generic_plan``)."""
    custom = "\n".join(row[0] for row in conn.execute(sa.text("EXPLAIN " + statement.text), params))
    numbered = re.sub(r"--[^\n]*", "", statement.text)  # comments name parameters too
    names = list(dict.fromkeys(re.findall(r"(?<!:):(\w+)", numbered)))
    for n, name in enumerate(names, 1):
        numbered = re.sub(rf"(?<!:):{name}\b", f"${n}", numbered)
    raw = conn.connection.driver_connection
    assert raw is not None
    raw.execute("SET LOCAL plan_cache_mode = force_generic_plan")
    raw.execute(f"PREPARE generic AS {numbered}")
    arguments = ", ".join(["%s"] * len(names))
    # Values as literals (a client-side cursor), which take the prepared parameters' types.
    with psycopg.ClientCursor(raw) as cursor:
        cursor.execute(f"EXPLAIN EXECUTE generic({arguments})", [params[n] for n in names])
        generic = "\n".join(row[0] for row in cursor.fetchall())
    raw.execute("DEALLOCATE generic")
    return [custom, generic]


def test_claim_plan_is_index_driven_right_after_a_burst(db: sa.Engine) -> None:
    """Before autovacuum has analysed the burst, the claim must not scan the table; nor
    must its generic plan, the one a relay's claims use (planning each claim of a trickle
    took a third of it)."""
    with db.begin() as conn:
        conn.execute(sa.text("ANALYZE outbox_jobs"))  # statistics of an empty table
    enqueue(db, [outbox.NewJob("a.burst", {"n": n}, key=f"k{n % 50}" if n % 2 else None)
                 for n in range(100_000)])  # fmt: skip
    from outbox_relay.claim import CLAIM
    from outbox_relay.floors import Floors

    for analysed in (False, True):  # before autovacuum, and after it (a large claim)
        if analysed:
            with db.begin() as conn:
                conn.execute(sa.text("ANALYZE outbox_jobs"))
        with db.connect() as conn:
            found = plans(conn, CLAIM, {
                "queues": ["default"], "limit": 500, "lease": timedelta(seconds=30),
                "rooms": [500], "relay": "r",
                **AttemptLimits(default=5, types=("a.burst",)).params(),
                **Floors().current(["default"]),
            })  # fmt: skip
            conn.rollback()
        for plan in found:
            assert "outbox_jobs_ready_idx" in plan
            assert "Seq Scan on outbox_jobs" not in plan
            assert "Tid Scan on outbox_jobs" in plan


def test_a_job_that_fell_due_since_the_last_claim_is_due_now_not_at_the_poll(
    db: sa.Engine,
) -> None:
    """A claim that found nothing, then a scheduled job falls due, then the idle wait asks
    for the next run: read only past its own now(), the job was neither ready for the claim
    nor ahead of the wait, and the relay slept the poll interval. Asked since the claim
    began, the job is due (0 or less: claim again at once). Not counted: a job due before
    the claim (it was there to take), and a job enqueued to run at once (its NOTIFY wakes an
    idle relay; while its key is busy or its queue full it would count at every turn)."""
    from outbox_relay.claim import seconds_to_next_run

    with db.connect() as conn:
        db_now = conn.execute(sa.text("SELECT now()")).scalar_one()
    due_at = db_now + timedelta(seconds=0.3)
    enqueue(db, [
        outbox.NewJob("a.b", {}, queue="due", run_at=due_at),
        outbox.NewJob("a.b", {}, queue="now"),  # to run at once
        outbox.NewJob("a.b", {}, queue="past", run_at=db_now - timedelta(seconds=1)),
    ])  # fmt: skip
    deadline = time.monotonic() + 10
    with db.connect() as conn:
        while conn.execute(sa.text("SELECT now() <= :at"), {"at": due_at}).scalar_one():
            conn.rollback()
            assert time.monotonic() < deadline, "the database's clock did not pass run_at"
            time.sleep(0.05)
        conn.rollback()
        assert seconds_to_next_run(conn, ["due"], ["a.b"]) is None  # not in the future
        fell_due = seconds_to_next_run(conn, ["due"], ["a.b"], since=30.0)
        assert fell_due is not None
        assert -30 < fell_due <= 0  # due since the claim began: claim again now
        assert seconds_to_next_run(conn, ["due"], ["a.other"], since=30.0) is None
        assert seconds_to_next_run(conn, ["now", "past"], ["a.b"], since=30.0) is None


def test_the_next_run_is_read_by_the_index_one_priority_at_a_time(db: sa.Engine) -> None:
    """An idle relay asks, at every sleep, when the next scheduled job of its types is due:
    with many scheduled jobs a plain min(run_at) read them all (14 ms at 50,000, a
    sequential scan). Each priority's first due job is one index probe; the answer is
    the earliest of them, of the relay's types and queues only."""
    from outbox_relay.claim import NEXT_RUN_AT, seconds_to_next_run
    from outbox_relay.floors import Floors

    now = datetime.now(UTC)
    enqueue(db, [
        outbox.NewJob("a.b", {}, priority=(0, 3, 9)[n % 3], queue=("q1", "q2")[n % 2],
                      run_at=now + timedelta(hours=2, seconds=n))
        for n in range(30_000)
    ] + [
        outbox.NewJob("a.b", {}, priority=3, queue="q2", run_at=now + timedelta(minutes=50)),
        outbox.NewJob("a.b", {}, priority=50, queue="q1", run_at=now + timedelta(minutes=40)),
        outbox.NewJob("a.other", {}, priority=0, queue="q1", run_at=now + timedelta(minutes=5)),
        outbox.NewJob("a.b", {}, priority=0, queue="q3", run_at=now + timedelta(minutes=1)),
        outbox.NewJob("a.b", {}, priority=1, queue="q1"),  # ready now: not scheduled
    ])  # fmt: skip
    with db.begin() as conn:
        conn.execute(sa.text("ANALYZE outbox_jobs"))
    with db.connect() as conn:
        due = seconds_to_next_run(conn, ["q1", "q2"], ["a.b"])
        assert due == pytest.approx(40 * 60, abs=30)  # priority 50 in q1: not only the first
        assert seconds_to_next_run(conn, ["q2"], ["a.b"]) == pytest.approx(50 * 60, abs=30)
        assert seconds_to_next_run(conn, ["q1"], ["a.other"]) == pytest.approx(5 * 60, abs=30)
        assert seconds_to_next_run(conn, ["q4"], ["a.b"]) is None
        lowest = Floors().current(["q1", "q2"])
        found = plans(
            conn, NEXT_RUN_AT, {"queues": ["q1", "q2"], "types": ["a.b"], "since": 0.0, **lowest}
        )
        # Past floors (a long snapshot pins the horizon): only what lies past each floor.
        floors = Floors()
        floors.turn(True)
        floors.advance({"q1": (9, now + timedelta(hours=3), 0)})
        past = floors.current(["q1", "q2"])
        assert seconds_to_next_run(conn, ["q1", "q2"], ["a.b"], past) == pytest.approx(
            40 * 60, abs=30
        )  # priority 50 lies past q1's floor; priorities 0 and 3 of q1 lie behind it
        floors.advance({"q1": (50, now + timedelta(hours=3), 0)})
        past = floors.current(["q1", "q2"])
        assert seconds_to_next_run(conn, ["q1", "q2"], ["a.b"], past) == pytest.approx(
            50 * 60, abs=30
        )  # q1's last job is behind its floor now; q2's floor is the lowest position
        found += plans(
            conn, NEXT_RUN_AT, {"queues": ["q1", "q2"], "types": ["a.b"], "since": 0.0, **past}
        )
        conn.rollback()
    for plan in found:
        assert "Seq Scan on outbox_jobs" not in plan
        assert "outbox_jobs_ready_idx" in plan


def test_completion_plan_probes_each_job_whatever_the_statistics(db: sa.Engine) -> None:
    """Statistics taken while every job was pending say none runs: the completion must still
    find each job by its key, not scan the running ones (or the table)."""
    enqueue(db, [outbox.NewJob("a.b", {"n": n}) for n in range(20_000)])
    with db.begin() as conn:
        conn.execute(sa.text("ANALYZE outbox_jobs"))
    with db.connect() as conn:
        jobs = [job for _ in range(10) for job in claim_batch(
            conn, queues=["default"], limit=500, lease=timedelta(seconds=30), relay="r",
            limits=AttemptLimits(default=5, types=("a.b",)))]  # fmt: skip
        params = {
            "done_uuid": [j.uuid for j in jobs[:500]], "done_attempt": [1] * 500,
            "done_ms": [0.1] * 500, "done_reason": [None] * 500,
            "failed_uuid": [j.uuid for j in jobs[500:600]],
            "failed_attempt": [1] * 100, "error": ["{}"] * 100, "retry_in": [1.0] * 100,
            "dead": [False] * 100, "failed_ms": [0.1] * 100, "relay": "r",
            # and 100 whose handler raised RetryLater
            **complete._postponements([execute.Outcome(j, 0.1, later=1.0) for j in jobs[600:700]]),
        }  # fmt: skip
        found = plans(conn, complete.BATCH, params)
        conn.rollback()
    for plan in found:
        assert "Seq Scan on outbox_jobs" not in plan
        assert "outbox_jobs_lease_idx" not in plan
        assert plan.count("outbox_jobs_pkey") == 3


WAITING = """
    SELECT count(*) FROM pg_locks
    WHERE NOT granted AND pid IN (
        SELECT pid FROM pg_stat_activity WHERE datname = current_database())
"""


def test_a_heartbeat_meeting_a_completion_loses_no_job(db: sa.Engine) -> None:
    """A lease renewed while the completion runs changes the row under it: the completion
    must re-read it, find it still leased to this relay, and complete it."""
    registry = outbox.Registry()
    registry.register("a.b", lambda job: None)
    enqueue(db, [outbox.NewJob("a.b", {})])
    with db.connect() as conn:
        [job] = claim_batch(conn, queues=["default"], limit=1, lease=timedelta(seconds=30),
                            relay="r", limits=A_B)  # fmt: skip
    lost: list[Any] = []
    with db.connect() as heartbeat:
        heartbeat.execute(
            sa.text("UPDATE outbox_jobs SET lease_expires_at = lease_expires_at + interval '1s'")
        )  # fmt: skip  (held open: the completion waits for it)

        def finish() -> None:
            with db.connect() as conn:
                lost.extend(complete.complete(conn, "r", [execute.Outcome(job, 1.0)], registry))

        completing = threading.Thread(target=finish)
        completing.start()
        wait_for(lambda: scalar(db, WAITING) > 0, what="the completion to wait for the heartbeat")
        heartbeat.commit()
        completing.join(timeout=30)
    assert lost == []
    assert live_jobs(db) == 0
    assert events(db, job.uuid) == ["enqueued", "claimed", "succeeded"]


def test_jobs_queued_behind_a_stuck_handler_run_on_other_threads(db: sa.Engine, dsn: str) -> None:
    release = threading.Event()
    done: list[int] = []
    registry = outbox.Registry()

    @registry.handler("a.mixed", timeout=0.3, max_attempts=1)
    def mixed(job: outbox.Job) -> None:
        if job.payload["n"] == 0:
            release.wait(20)
        else:
            done.append(job.payload["n"])

    enqueue(db, [outbox.NewJob("a.mixed", {"n": n}) for n in range(10)])
    with running_relay(registry, dsn, concurrency=2, claim_batch=10):
        wait_for(lambda: sorted(done) == list(range(1, 10)), timeout=20, what="the other nine")
        wait_for(lambda: "past its timeout" in (scalar(db, "SELECT last_error FROM outbox_jobs")
                                                or ""), what="the stuck one to fail")  # fmt: skip
        release.set()


def test_lost_listen_connection_is_made_again(db: sa.Engine, dsn: str) -> None:
    ran = threading.Event()
    registry = outbox.Registry()
    registry.register("a.now", lambda job: ran.set())
    terminate = sa.text(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = :name"
    )
    listening = sa.text("SELECT pid FROM pg_stat_activity WHERE application_name = :name")
    from prometheus_client import REGISTRY

    def reconnections() -> float:
        return REGISTRY.get_sample_value("outbox_database_reconnects_total") or 0.0

    reconnects = reconnections()
    with running_relay(registry, dsn, poll_interval=timedelta(seconds=60)) as worker:
        name = f"outbox relay {worker.relay} listen"
        wait_for(worker.listener.connected.is_set, what="LISTEN")
        with db.connect() as conn:
            old = conn.execute(listening, {"name": name}).scalar()
            conn.execute(terminate, {"name": name})
            conn.commit()

        def listening_again() -> bool:
            with db.connect() as conn:
                pid = conn.execute(listening, {"name": name}).scalar()
            return pid is not None and pid != old and worker.listener.connected.is_set()

        wait_for(listening_again, what="a new LISTEN connection")
        time.sleep(0.3)  # let the relay go idle again
        enqueue(db, [outbox.NewJob("a.now", {})])
        assert ran.wait(15), "the new LISTEN connection should wake the relay, not its 60s poll"
    assert reconnections() == reconnects + 1


def test_unknown_types_ahead_in_a_queue_wait_and_the_rest_succeed(db: sa.Engine, dsn: str) -> None:
    registry = outbox.Registry()
    registry.register("a.known", lambda job: None)
    jobs = [outbox.NewJob("a.unknown", {"n": n}) for n in range(2)]
    jobs += [outbox.NewJob("a.known", {"n": n}) for n in range(5)]
    handles = enqueue(db, jobs)
    with running_relay(registry, dsn, claim_batch=10):
        wait_for(lambda: scalar(
            db, "SELECT count(*) FROM outbox_history WHERE event = 'succeeded'") == 5,
            what="five done")  # fmt: skip
    with db.connect() as conn:
        waiting = set(
            conn.execute(
                sa.text("SELECT uuid FROM outbox_jobs WHERE state = 'pending' AND attempt = 0")
            ).scalars()
        )
    assert waiting == {h.uuid for h in handles[:2]}
    assert scalar(db, "SELECT count(*) FROM outbox_history WHERE event = 'succeeded'") == 5


def test_a_backlog_is_claimed_in_large_batches_not_in_scraps(db: sa.Engine, dsn: str) -> None:
    """While work waits, the relay waits for room for half a claim before claiming again, and
    claims grow with the handlers' pace: each claim costs a commit, whatever its size."""
    registry = outbox.Registry()
    registry.register("a.b", lambda job: None)
    enqueue(db, [outbox.NewJob("a.b", {"n": n}) for n in range(3000)])
    with running_relay(registry, dsn, concurrency=4, claim_batch=200):
        wait_for(lambda: live_jobs(db) == 0, what="the backlog drained")
    with db.connect() as conn:
        sizes = list(conn.execute(sa.text(
            "SELECT count(*) FROM outbox_history WHERE event = 'claimed' GROUP BY xid ORDER BY xid"
        )).scalars())  # fmt: skip
    assert sum(sizes) == 3000
    # Claims grow with the pace the handlers show (relay/pace.py), then stay large: a few
    # dozen claims in all, where claims of what a freed place allowed made hundreds.
    assert len(sizes) < 60, sizes
    later = sorted(sizes[len(sizes) // 2 : -1])
    assert later[len(later) // 2] >= 100, sizes


def test_a_trickle_is_claimed_as_it_comes(db: sa.Engine, dsn: str) -> None:
    """The wait for room is for backlogs only: a lone job after a full claim runs at once."""
    registry = outbox.Registry()
    registry.register("a.b", lambda job: None)
    enqueue(db, [outbox.NewJob("a.b", {"n": n}) for n in range(20)])
    with running_relay(registry, dsn, concurrency=2, claim_batch=10):
        wait_for(lambda: live_jobs(db) == 0, what="the first jobs done")
        [late] = enqueue(db, [outbox.NewJob("a.b", {"n": 99})])
        wait_for(lambda: "succeeded" in events(db, late.uuid), timeout=5, what="the late job")


def test_a_job_without_an_idempotency_key_is_handed_its_uuid_as_one_by_either_claim(
    db: sa.Engine,
) -> None:
    """G3: the key to pass on to other services is the same on every attempt, the enqueuer's
    or else the job's uuid, whichever claim took the job."""
    registry = outbox.Registry()
    registry.register("a.idem", lambda job: None)
    plain, given, alone = enqueue(db, [
        outbox.NewJob("a.idem", {}), outbox.NewJob("a.idem", {}, idempotency_key="pay-7"),
        outbox.NewJob("a.idem", {}, queue="alone"),
    ])  # fmt: skip
    with db.begin() as conn:
        conn.execute(sa.text("UPDATE outbox_jobs SET isolated = true WHERE queue = 'alone'"))
    claims = {"lease": timedelta(seconds=30), "relay": "r1",
              "limits": AttemptLimits.of(registry, default=5)}  # fmt: skip
    with db.connect() as conn:
        batch = claim_batch(conn, queues=["default"], limit=10, **claims)
        isolated = claim_isolated(conn, queues=["alone"], **claims)
    assert {job.uuid: job.idempotency_key for job in batch} == {
        plain.uuid: str(plain.uuid), given.uuid: "pay-7",
    }  # fmt: skip
    assert isolated is not None
    assert (isolated.uuid, isolated.idempotency_key) == (alone.uuid, str(alone.uuid))
