"""Faults we can really produce here, against real relay processes (G2, G3, G4, G6)."""

from __future__ import annotations

import json
import os
import signal
import time

import sqlalchemy as sa

import outbox
from outbox.audit import verify
from outbox.audit.seal import SEALER_LOCK
from tests.chaos.conftest import Relays, effects_per_job, enqueue, scalar, wait_for


def live(engine: sa.Engine) -> int:
    return int(scalar(engine, "SELECT count(*) FROM outbox_jobs"))


def running(engine: sa.Engine) -> int:
    return int(scalar(engine, "SELECT count(*) FROM outbox_jobs WHERE state = 'running'"))


def effects(engine: sa.Engine) -> int:
    return int(scalar(engine, "SELECT count(*) FROM chaos_effects"))


def succeeded(engine: sa.Engine) -> int:
    return int(scalar(engine, "SELECT count(*) FROM outbox_history WHERE event = 'succeeded'"))


def test_kill_9_mid_batch_another_relay_finishes_every_effect_once(
    chaos_db: sa.Engine, relays: Relays
) -> None:
    handles = enqueue(
        chaos_db, [outbox.NewJob("chaos.effect", {"sleep": 0.01}) for _ in range(400)]
    )
    first = relays.start("--concurrency", "8")
    wait_for(lambda: effects(chaos_db) >= 40, 30, "the first relay to make progress", relays)
    wait_for(lambda: running(chaos_db) > 0, 10, "jobs in flight", relays)
    os.kill(first.pid, signal.SIGKILL)
    first.wait(10)
    relays.start("--concurrency", "8")
    wait_for(lambda: live(chaos_db) == 0, 90, "every job to complete", relays)
    assert effects_per_job(chaos_db) == {h.uuid: 1 for h in handles}


def test_sigstop_past_the_lease_then_sigcont_commits_nothing_twice(
    chaos_db: sa.Engine, relays: Relays
) -> None:
    handles = enqueue(chaos_db, [outbox.NewJob("chaos.effect", {"sleep": 0.3}) for _ in range(24)])
    stopped = relays.start("--concurrency", "4")
    wait_for(lambda: running(chaos_db) > 0, 30, "the first relay to hold jobs", relays)
    os.kill(stopped.pid, signal.SIGSTOP)
    held = scalar(chaos_db, "SELECT count(*) FROM outbox_jobs WHERE state = 'running'")
    assert held > 0
    relays.start("--concurrency", "4")
    wait_for(lambda: live(chaos_db) == 0, 90, "the second relay to complete everything", relays)
    os.kill(stopped.pid, signal.SIGCONT)
    stopped.send_signal(signal.SIGTERM)  # it wakes, meets its fence, and shuts down
    assert stopped.wait(30) == 0, relays.log_tail()
    assert effects_per_job(chaos_db) == {h.uuid: 1 for h in handles}


def test_handler_that_kills_its_process_ends_dead_after_max_attempts(
    chaos_db: sa.Engine, relays: Relays
) -> None:
    [handle] = enqueue(chaos_db, [outbox.NewJob("chaos.crash", {})])
    # Metrics served: the supervisor has a thread, so a process that died is started anew.
    supervisor = relays.start(
        "--processes", "2", "--concurrency", "1", "--metrics-addr", "127.0.0.1:0"
    )  # fmt: skip
    wait_for(lambda: scalar(chaos_db, "SELECT state FROM outbox_jobs") == "dead", 90,
             "the crashing job to end dead", relays)  # fmt: skip
    with chaos_db.connect() as conn:
        trail = conn.execute(sa.text(
            "SELECT event FROM outbox_history WHERE job_uuid = :u ORDER BY id"
        ), {"u": handle.uuid}).scalars().all()  # fmt: skip
    # Its first run lost its lease with nothing to say that it was to blame: given back. Then
    # it ran alone, and each of those crashes counted, up to max_attempts=3.
    assert trail.count("claimed") == 1 + 3
    assert trail[-1] == "dead"
    supervisor.send_signal(signal.SIGTERM)
    assert supervisor.wait(30) == 0, relays.log_tail()
    # The first processes were forked from the supervisor (still one thread then); those that
    # died were started anew, not forked from a process with threads.
    lines = (relays.logs / "relay-0.log").read_text().splitlines()
    started = [json.loads(line) for line in lines if "relay process started" in line]
    assert [(e["slot"], e["how"]) for e in started[:2]] == [(0, "forked"), (1, "forked")]
    assert len(started) >= 2 + 3
    assert {e["how"] for e in started[2:]} == {"executed"}


def test_terminated_connections_are_survived_and_every_effect_happens_once(
    chaos_db: sa.Engine, relays: Relays
) -> None:
    handles = enqueue(
        chaos_db, [outbox.NewJob("chaos.effect", {"sleep": 0.005}) for _ in range(600)]
    )
    relays.start("--concurrency", "4")
    relays.start("--concurrency", "4")
    for round_ in range(3):
        target = 100 * (round_ + 1)
        wait_for(lambda t=target: effects(chaos_db) >= t, 60, "progress", relays)
        with chaos_db.connect() as conn:
            conn.execute(sa.text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                "AND application_name LIKE 'outbox relay%'"
            ))  # fmt: skip
            conn.commit()
    wait_for(lambda: live(chaos_db) == 0, 120, "every job to complete", relays)
    assert effects_per_job(chaos_db) == {h.uuid: 1 for h in handles}
    assert all(p.poll() is None for p in relays.procs), "relays must survive, not exit"


def test_two_relays_keep_per_key_order_exactly(chaos_db: sa.Engine, relays: Relays) -> None:
    keys = [f"account:{n}" for n in range(20)]
    jobs = [
        outbox.NewJob("chaos.effect", {"seq": seq}, key=key) for seq in range(250) for key in keys
    ]
    enqueue(chaos_db, jobs)
    relays.start("--concurrency", "8")
    relays.start("--concurrency", "8")
    wait_for(lambda: live(chaos_db) == 0, 240, "5,000 keyed jobs", relays)
    with chaos_db.connect() as conn:
        rows = conn.execute(sa.text("SELECT key, seq FROM chaos_effects ORDER BY id")).all()
    assert len(rows) == 5000
    for key in keys:
        assert [seq for k, seq in rows if k == key] == list(range(250)), key


def test_sigterm_under_load_exits_zero_in_grace_and_loses_nothing(
    chaos_db: sa.Engine, relays: Relays
) -> None:
    handles = enqueue(
        chaos_db, [outbox.NewJob("chaos.plain", {"sleep": 0.02}) for _ in range(2000)]
    )
    relay = relays.start("--concurrency", "8")
    wait_for(lambda: succeeded(chaos_db) >= 100, 60, "progress", relays)
    signalled = time.monotonic()
    relay.send_signal(signal.SIGTERM)
    assert relay.wait(20) == 0, relays.log_tail()
    assert time.monotonic() - signalled < 10 + 5  # OUTBOX_SHUTDOWN_GRACE=10s, plus start-up slack
    assert running(chaos_db) == 0
    assert succeeded(chaos_db) + live(chaos_db) == len(handles)


def test_ten_thousand_jobs_across_four_processes_all_succeed(
    chaos_db: sa.Engine, relays: Relays
) -> None:
    handles = enqueue(chaos_db, [outbox.NewJob("chaos.plain", {"n": n}) for n in range(10_000)])
    supervisor = relays.start("--processes", "4")
    wait_for(lambda: live(chaos_db) == 0, 180, "10,000 jobs", relays)
    supervisor.send_signal(signal.SIGTERM)
    assert supervisor.wait(30) == 0, relays.log_tail()
    with chaos_db.connect() as conn:
        done = set(conn.execute(sa.text(
            "SELECT job_uuid FROM outbox_history WHERE event = 'succeeded'"
        )).scalars())  # fmt: skip
        twice = conn.execute(sa.text(
            "SELECT count(*) FROM (SELECT job_uuid FROM outbox_history WHERE event = 'succeeded' "
            "GROUP BY job_uuid HAVING count(*) > 1) d"
        )).scalar()  # fmt: skip
    assert done == {h.uuid for h in handles}
    assert twice == 0


def test_supervisor_restarts_a_killed_child_and_its_children_outlive_it_not(
    chaos_db: sa.Engine, relays: Relays
) -> None:
    import psutil

    handles = enqueue(
        chaos_db, [outbox.NewJob("chaos.effect", {"sleep": 0.02}) for _ in range(300)]
    )
    supervisor = relays.start("--processes", "2", "--concurrency", "4")
    parent = psutil.Process(supervisor.pid)
    first = wait_for(
        lambda: len(parent.children()) == 2 and parent.children(), 30, "2 children", relays
    )
    victim = first[0].pid
    os.kill(victim, signal.SIGKILL)

    def replaced() -> bool:
        pids = {c.pid for c in parent.children()}
        return len(pids) == 2 and victim not in pids

    wait_for(replaced, 30, "the killed child to be replaced", relays)
    wait_for(lambda: live(chaos_db) == 0, 90, "every job to complete", relays)
    assert effects_per_job(chaos_db) == {h.uuid: 1 for h in handles}
    orphans = parent.children()
    os.kill(supervisor.pid, signal.SIGKILL)
    supervisor.wait(10)
    _, alive = psutil.wait_procs(orphans, timeout=30)
    assert not alive, "relay processes must stop when their supervisor is gone"


def test_second_signal_exits_at_once_and_loses_nothing(chaos_db: sa.Engine, relays: Relays) -> None:
    handles = enqueue(chaos_db, [outbox.NewJob("chaos.effect", {"sleep": 3}) for _ in range(8)])
    relay = relays.start("--concurrency", "4", env={"OUTBOX_SHUTDOWN_GRACE": "60s"})
    wait_for(lambda: running(chaos_db) > 0, 30, "jobs in flight", relays)
    relay.send_signal(signal.SIGTERM)
    log = relays.logs / "relay-0.log"
    wait_for(lambda: b"stopping" in log.read_bytes(), 10, "the first signal to be taken", relays)
    relay.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    assert relay.wait(10) != 0
    assert time.monotonic() - signalled < 5, "a second signal must not wait for the grace period"
    relays.start("--concurrency", "4")
    wait_for(lambda: live(chaos_db) == 0, 90, "every job to complete", relays)
    assert effects_per_job(chaos_db) == {h.uuid: 1 for h in handles}


def sealing_relay_pid(engine: sa.Engine) -> int | None:
    """The OS pid of the relay holding the sealer's lock, from its connection's name."""
    name = scalar(engine, """
        SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
        WHERE l.locktype = 'advisory' AND l.classid = :c AND l.objid = :i AND l.granted
          AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
    """, c=SEALER_LOCK[0], i=SEALER_LOCK[1])  # fmt: skip
    return None if name is None else int(name.split()[2].split(":")[1])


def test_sealer_failover_when_the_sealing_relay_is_killed(
    chaos_db: sa.Engine, relays: Relays
) -> None:
    enqueue(chaos_db, [outbox.NewJob("chaos.effect", {}) for _ in range(200)])
    fast = {"OUTBOX_SEAL_INTERVAL": "0.2s"}
    procs = {p.pid: p for p in (relays.start(env=fast), relays.start(env=fast))}
    leader = wait_for(lambda: sealing_relay_pid(chaos_db), 30, "a relay to seal", relays)
    assert leader in procs
    wait_for(lambda: scalar(chaos_db, "SELECT count(*) FROM outbox_seals") > 0, 30, "a seal")
    os.kill(leader, signal.SIGKILL)
    procs[leader].wait(10)
    sealed_before = scalar(chaos_db, "SELECT max(id) FROM outbox_seals")
    enqueue(chaos_db, [outbox.NewJob("chaos.effect", {}) for _ in range(200)])
    survivor = wait_for(lambda: sealing_relay_pid(chaos_db), 30, "another relay to seal", relays)
    assert survivor != leader
    wait_for(lambda: live(chaos_db) == 0, 60, "every job to complete", relays)

    def all_sealed() -> bool:
        unsealed = scalar(chaos_db, "SELECT count(*) FROM outbox_history WHERE xid >= "
                                    "(SELECT max(xid_to) FROM outbox_seals)")  # fmt: skip
        return unsealed == 0

    wait_for(all_sealed, 60, "the survivor to seal the rest", relays)
    assert scalar(chaos_db, "SELECT max(id) FROM outbox_seals") > sealed_before
    with chaos_db.connect() as conn:
        report = verify.verify(conn)
    assert report.rows == scalar(chaos_db, "SELECT count(*) FROM outbox_history")
