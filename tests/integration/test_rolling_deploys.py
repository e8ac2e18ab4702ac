"""Rolling deploys: a relay never claims a job whose type it has no handler for. Such jobs
wait, untouched, for a relay that knows them, and status and metrics name them meanwhile."""

from __future__ import annotations

import json
from datetime import timedelta

import sqlalchemy as sa
from click.testing import CliRunner
from outbox_relay.claim import CLAIM, AttemptLimits, isolated_ready, seconds_to_next_run
from outbox_relay.floors import Floors
from sqlalchemy.orm import Session
from structlog.testing import capture_logs

import outbox
from outbox.cli import cli
from outbox.database import create_engine
from outbox.status import snapshot
from outbox.testing import temporary_database
from tests.integration.relay_harness import events, live_jobs, running_relay, scalar, wait_for
from tests.integration.test_observability import get, samples


def enqueue(engine: sa.Engine, jobs: list[outbox.NewJob]) -> list[outbox.Enqueued]:
    with Session(engine) as session:
        handles = outbox.enqueue_many(session, jobs)
        session.commit()
    return handles


def old_and_new() -> tuple[outbox.Registry, outbox.Registry, list[str]]:
    """The registry of the relay still running (a.old) and of the one deployed next (a.old
    and a.new); the second records the order in which its jobs ran."""
    ran: list[str] = []
    old = outbox.Registry()
    old.register("a.old", lambda job: None)
    new = outbox.Registry()
    new.register("a.old", lambda job: None)
    new.register("a.new", lambda job: ran.append(f"{job.type} {job.payload['n']}"))
    return old, new, ran


def untouched(engine: sa.Engine, handles: list[outbox.Enqueued]) -> None:
    """Each job is pending at attempt 0 with no history but its enqueue."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT state, attempt, relay FROM outbox_jobs WHERE uuid = ANY(:u)"),
            {"u": [h.uuid for h in handles]},
        ).all()
    assert rows == [("pending", 0, None)] * len(handles)
    for handle in handles:
        assert events(engine, handle.uuid) == ["enqueued"]


def test_jobs_of_a_type_the_relay_cannot_run_wait_untouched_for_one_that_can(
    db: sa.Engine, dsn: str
) -> None:
    """A producer shipped before its consumer: 600 jobs of a type no relay knows yet are
    never claimed (no `claimed`, no `dead`, attempt 0), the known jobs around them run, and
    the next relay, which knows the type, runs them all."""
    old, new, ran = old_and_new()
    waiting = enqueue(db, [outbox.NewJob("a.new", {"n": n}) for n in range(600)])
    known = enqueue(db, [outbox.NewJob("a.old", {"n": n}) for n in range(20)])
    with running_relay(old, dsn, claim_batch=50) as worker:
        wait_for(lambda: all("succeeded" in events(db, h.uuid) for h in known), what="a.old")
        # A job enqueued after the relay went idle: proof that it claimed again since, and
        # still left the 600 where they were.
        [late] = enqueue(db, [outbox.NewJob("a.old", {"n": 99})])
        wait_for(lambda: "succeeded" in events(db, late.uuid), what="the late a.old job")
        untouched(db, waiting)
        assert worker.inflight.finished_total == 21
    with running_relay(new, dsn, claim_batch=50):
        wait_for(lambda: live_jobs(db) == 0, what="the relay that knows a.new to run them")
    assert sorted(ran) == sorted(f"a.new {n}" for n in range(600))
    assert scalar(db, "SELECT count(*) FROM outbox_history WHERE event = 'dead'") == 0
    assert scalar(db, "SELECT max(attempt) FROM outbox_history WHERE event = 'succeeded'") == 1


def test_a_waiting_job_keeps_its_key_and_its_successors_run_after_it(
    db: sa.Engine, dsn: str
) -> None:
    """Per-key order (G4) holds across the deploy: a known job behind an unknown one of the
    same key waits too, and runs after it once a relay knows both."""
    old, new, _ = old_and_new()
    first, second = enqueue(db, [
        outbox.NewJob("a.new", {"n": 1}, key="account:1"),
        outbox.NewJob("a.old", {"n": 2}, key="account:1"),
    ])  # fmt: skip
    [free] = enqueue(db, [outbox.NewJob("a.old", {"n": 3}, key="account:2")])
    with running_relay(old, dsn):
        wait_for(lambda: "succeeded" in events(db, free.uuid), what="the other key's job")
        untouched(db, [first, second])
    with running_relay(new, dsn):
        wait_for(lambda: live_jobs(db) == 0, what="both jobs of the key")
    with db.connect() as conn:
        order = conn.execute(sa.text(
            "SELECT job_uuid FROM outbox_history WHERE event = 'succeeded' "
            "AND job_uuid = ANY(:u) ORDER BY id"), {"u": [first.uuid, second.uuid]},
        ).scalars().all()  # fmt: skip
    assert order == [first.uuid, second.uuid]


def test_an_idle_relay_neither_wakes_for_nor_makes_room_for_jobs_it_cannot_run(
    db: sa.Engine,
) -> None:
    """A scheduled job of an unknown type does not shorten an idle relay's sleep, and an
    isolated one (it lost a lease on a relay that knew its type) does not make this relay
    wait for its handlers to finish, again and again, for a claim that takes nothing."""
    with Session(db) as session:
        outbox.enqueue(session, "a.new", {}, delay=timedelta(seconds=5))
        outbox.enqueue(session, "a.old", {}, delay=timedelta(seconds=600))
        isolated = outbox.enqueue(session, "a.new", {})
        session.commit()
    with db.begin() as conn:
        conn.execute(sa.text("UPDATE outbox_jobs SET isolated = true WHERE uuid = :u"),
                     {"u": isolated.uuid})  # fmt: skip
    with db.connect() as conn:
        due = seconds_to_next_run(conn, ["default"], ["a.old"])
        assert 590 < (due or 0) <= 600
        assert not isolated_ready(conn, ["default"], ["a.old"])
        assert isolated_ready(conn, ["default"], ["a.old", "a.new"])
        due = seconds_to_next_run(conn, ["default"], ["a.old", "a.new"])
        assert 0 < (due or 0) <= 5


def test_status_and_metrics_name_the_types_no_live_relay_can_run(db: sa.Engine, dsn: str) -> None:
    old, _, _ = old_and_new()
    enqueue(db, [outbox.NewJob("a.new", {"n": n}) for n in range(3)])
    enqueue(db, [outbox.NewJob("a.new", {}, queue="mail")])
    enqueue(db, [outbox.NewJob("a.new", {}, delay=timedelta(hours=1))])  # not waiting yet
    with db.begin() as conn:  # the oldest has waited ten minutes
        conn.execute(sa.text(
            "UPDATE outbox_jobs SET run_at = now() - interval '10 minutes', "
            "enqueued_at = now() - interval '10 minutes' "
            "WHERE id = (SELECT min(id) FROM outbox_jobs)"))  # fmt: skip
    # capture_logs: the in-process relay's log lines stay out of the command's output.
    with capture_logs(), running_relay(old, dsn, metrics_addr=("127.0.0.1", 0)) as worker:
        wait_for(lambda: scalar(db, "SELECT types FROM outbox_relays") == ["a.old"],
                 what="the relay to announce its types")  # fmt: skip
        with db.connect() as conn:
            current = snapshot(conn)
        unrunnable = {(u.queue, u.type): u for u in current.unrunnable}
        assert unrunnable.keys() == {("default", "a.new"), ("mail", "a.new")}
        assert unrunnable["default", "a.new"].jobs == 3
        assert 600 <= (unrunnable["default", "a.new"].oldest_seconds or 0) < 700
        assert unrunnable["mail", "a.new"].jobs == 1
        assert current.relays[0].types == ["a.old"]

        result = CliRunner().invoke(cli, ["--dsn", dsn, "status", "--json"])
        assert result.exit_code == 0, result.output
        shown = json.loads(result.output)["unrunnable"]
        assert {(u["queue"], u["type"], u["jobs"]) for u in shown} == {
            ("default", "a.new", 3), ("mail", "a.new", 1),
        }  # fmt: skip
        table = CliRunner(env={"COLUMNS": "80"}).invoke(cli, ["--dsn", dsn, "status"])
        assert table.exit_code == 0, table.output
        assert "no live relay can run" in table.output
        assert "a.new" in table.output

        assert worker.http is not None
        base = "http://{}:{}".format(*worker.http.address)

        def scraped() -> str | None:
            _, text = get(f"{base}/metrics")
            return text if samples(text, "outbox_unrunnable_jobs", queue="default") == 3 else None

        text = wait_for(scraped, what="the unrunnable gauge")
        assert samples(text, "outbox_unrunnable_jobs", queue="mail", type="a.new") == 1
        age = samples(text, "outbox_unrunnable_job_age_seconds", queue="default", type="a.new")
        assert 600 <= age < 700


def test_a_type_some_live_relay_can_run_is_not_listed(db: sa.Engine) -> None:
    enqueue(db, [outbox.NewJob("a.new", {})])
    enqueue(db, [outbox.NewJob("a.new", {}, queue="mail")])  # no relay takes queue mail
    with db.connect() as conn:  # no relay alive at all: every job waits, nothing is singled out
        assert snapshot(conn).unrunnable == []
    with db.begin() as conn:  # a relay that knows a.new, alive but busy elsewhere
        conn.execute(sa.text(
            "INSERT INTO outbox_relays (relay, host, pid, queues, concurrency, version, "
            "expires_at, types) VALUES ('other', 'h', 1, '{default}', 1, 'x', "
            "now() + interval '1 minute', '{a.new}')"))  # fmt: skip
    with db.connect() as conn:
        listed = [(u.queue, u.type) for u in snapshot(conn).unrunnable]
    assert listed == [("mail", "a.new")]


def test_claims_read_past_waiting_jobs_without_jit(db: sa.Engine, dsn: str) -> None:
    """A claim reading past many waiting jobs looks costly to the planner; compiling it took
    200 of its 215 ms. Claims and completions run on connections without JIT, and with
    one generic plan a statement (no planning at each claim)."""
    registry = outbox.Registry()
    registry.register("a.old", lambda job: None)
    with running_relay(registry, dsn) as worker, worker.fast.connect() as conn:
        assert conn.exec_driver_sql("SHOW jit").scalar() == "off"
        assert conn.exec_driver_sql("SHOW plan_cache_mode").scalar() == "force_generic_plan"


def test_a_burst_of_a_type_the_statistics_never_saw_is_claimed_by_the_index(server: str) -> None:
    """Statistics taken before a new type was deployed call it rare: a claim that filtered on
    `type = ANY(:types)` was costed at a million (an index read of every ready job, compiled
    by JIT). The type test must not steer the plan. In a database of its own: autovacuum
    analyses these rows, and column statistics outlive TRUNCATE."""
    with temporary_database(server, prefix="outbox_test_new_type") as dsn:
        engine = create_engine(dsn, poolclass=sa.NullPool)
        try:
            with Session(engine) as session, session.begin():
                outbox.enqueue_many(session, [outbox.NewJob("a.old", {"n": n})
                                              for n in range(20_000)])  # fmt: skip
            with engine.begin() as conn:
                conn.execute(sa.text("ANALYZE outbox_jobs"))
            with Session(engine) as session, session.begin():
                outbox.enqueue_many(session, [outbox.NewJob("a.new", {"n": n})
                                              for n in range(50_000)])  # fmt: skip
            params = {
                "queues": ["default"], "rooms": [500], "limit": 500,
                "lease": timedelta(seconds=30), "relay": "r",
                **AttemptLimits(default=5, types=("a.new",)).params(),
                **Floors().current(["default"]),
            }  # fmt: skip
            with engine.connect() as conn:
                [plan] = conn.execute(
                    sa.text("EXPLAIN (FORMAT JSON) " + CLAIM.text), params
                ).scalar()
                conn.rollback()
        finally:
            engine.dispose()
    text = json.dumps(plan)
    assert "outbox_jobs_ready_idx" in text
    assert '"Seq Scan"' not in text
    assert plan["Plan"]["Total Cost"] < 100_000  # jit_above_cost: never compiled
