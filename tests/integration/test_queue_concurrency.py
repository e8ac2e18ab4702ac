"""Per-queue limits (``--queues slow=2,fast=3``): a slow queue fills its own places only, the
other queues' jobs run beside it, and a full queue neither blocks claims nor spins the relay."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import prometheus_client
import sqlalchemy as sa
from outbox_relay.claim import CLAIM, AttemptLimits, claim_batch
from outbox_relay.floors import Floors
from sqlalchemy.orm import Session

import outbox
from outbox.database import create_engine
from outbox.testing import temporary_database
from tests.integration.relay_harness import running_relay, scalar, wait_for

ROOT = Path(__file__).resolve().parents[2]


class Gate:
    """Handlers that block until released, counting how many run at once."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self._lock = threading.Lock()
        self.running = 0
        self.most = 0
        self.started = 0

    def __call__(self, job: outbox.Job) -> None:
        with self._lock:
            self.running += 1
            self.started += 1
            self.most = max(self.most, self.running)
        try:
            assert self.release.wait(60), "never released"
        finally:
            with self._lock:
                self.running -= 1


def enqueue(db: sa.Engine, jobs: list[outbox.NewJob]) -> None:
    with Session(db) as session:
        outbox.enqueue_many(session, jobs)
        session.commit()


def left(db: sa.Engine, queue: str) -> int:
    return int(scalar(db, "SELECT count(*) FROM outbox_jobs WHERE queue = :q", q=queue))


def held(db: sa.Engine, queue: str) -> int:
    sql = "SELECT count(*) FROM outbox_jobs WHERE queue = :q AND state = 'running'"
    return int(scalar(db, sql, q=queue))


def test_a_claim_takes_no_more_of_a_queue_than_its_room(db: sa.Engine) -> None:
    enqueue(db, [outbox.NewJob("a.b", {}, queue=q) for q in ("a", "b", "c") for _ in range(10)])
    with db.connect() as conn:
        jobs = claim_batch(
            conn, queues=["a", "b"], rooms=[2, 5], limit=100, lease=timedelta(seconds=30),
            relay="r:1:x", limits=AttemptLimits(default=5, types=("a.b",)),
        )  # fmt: skip
    assert sorted(job.queue for job in jobs) == ["a"] * 2 + ["b"] * 5
    with db.connect() as conn:  # and the claim's own limit still caps the whole
        jobs = claim_batch(
            conn, queues=["a", "b"], rooms=[8, 5], limit=3, lease=timedelta(seconds=30),
            relay="r:1:x", limits=AttemptLimits(default=5, types=("a.b",)),
        )  # fmt: skip
    assert len(jobs) == 3
    assert (held(db, "a"), held(db, "b"), held(db, "c")) == (2 + 3, 5, 0)


def test_the_claim_is_priced_by_its_size_whatever_the_room(server: str) -> None:
    """A LIMIT the planner cannot estimate (least(:limit, room)) prices each queue's scan at
    a tenth of the queue: past jit_above_cost, every claim was compiled (10 ms to 35 ms a
    claim of 500, half a drain's speed). The room must cap the rows, not the estimate.

    In a database of its own: autovacuum analyses these rows, and column statistics outlive
    TRUNCATE, so other tests' plans would follow them."""
    with temporary_database(server, prefix="outbox_test_priced") as dsn:
        engine = create_engine(dsn, poolclass=sa.NullPool)
        try:
            enqueue(engine, [outbox.NewJob("a.b", {"n": n}) for n in range(20_000)])
            with engine.begin() as conn:
                conn.execute(sa.text("ANALYZE outbox_jobs"))
            params = {
                "queues": ["default"], "rooms": [3], "limit": 500,
                "lease": timedelta(seconds=30), "relay": "r",
                **AttemptLimits(default=5, types=("a.b",)).params(),
                **Floors().current(["default"]),
            }  # fmt: skip
            with engine.connect() as conn:
                explain = sa.text("EXPLAIN (FORMAT JSON) " + CLAIM.text)
                [plan] = conn.execute(explain, params).scalar()
                conn.rollback()
        finally:
            engine.dispose()

    def nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
        yield node
        for child in node.get("Plans", []):
            yield from nodes(child)

    limits = [n["Plan Rows"] for n in nodes(plan["Plan"]) if n["Node Type"] == "Limit"]
    assert 500 in limits  # each queue's read, as the planner sees it
    assert max(limits) <= 500, limits
    assert "JIT" not in plan


def test_a_slow_queue_at_its_limit_does_not_starve_the_others(db: sa.Engine, dsn: str) -> None:
    gate = Gate()
    fast_done: list[int] = []
    registry = outbox.Registry()
    registry.register("slow.job", gate, queue="slow")
    registry.register("fast.job", lambda job: fast_done.append(1), queue="fast")
    enqueue(db, [outbox.NewJob("slow.job", {}, queue="slow") for _ in range(12)])
    enqueue(db, [outbox.NewJob("fast.job", {"n": n}, queue="fast") for n in range(40)])
    try:
        with running_relay(registry, dsn, queue_limits={"slow": 2, "fast": 3}):
            wait_for(lambda: gate.running == 2, what="two slow handlers to be blocked")
            wait_for(lambda: left(db, "fast") == 0, what="every fast job to finish")
            # Every fast job ran while the slow queue's two handlers were still blocked.
            assert not gate.release.is_set()
            assert gate.running == 2
            assert len(fast_done) == 40
            # The slow queue's backlog waits in the database, for any relay with room.
            assert held(db, "slow") == 2
            assert left(db, "slow") == 12
            gate.release.set()
            wait_for(lambda: left(db, "slow") == 0, what="the slow jobs to finish once released")
    finally:
        gate.release.set()
    assert gate.started == 12
    assert gate.most == 2


def test_a_full_queue_neither_blocks_claims_nor_spins_the_relay(db: sa.Engine, dsn: str) -> None:
    gate = Gate()
    registry = outbox.Registry()
    registry.register("slow.job", gate, queue="slow")
    registry.register("other.job", lambda job: None, queue="other")
    enqueue(db, [outbox.NewJob("slow.job", {}, queue="slow") for _ in range(5)])
    try:
        with running_relay(registry, dsn, queue_limits={"slow": 1, "other": 2}):
            wait_for(lambda: gate.running == 1, what="the slow handler to be blocked")
            claims = prometheus_client.REGISTRY.get_sample_value("outbox_claim_batch_size_count")
            window = time.monotonic() + 1.0
            while time.monotonic() < window:  # a measuring window: the relay is left alone
                time.sleep(0.05)
            spent = (
                prometheus_client.REGISTRY.get_sample_value("outbox_claim_batch_size_count") or 0
            ) - (claims or 0)
            # Idle with only a full queue's work ready: a claim per poll (0.2 s) for the other
            # queue, not a loop of claims.
            assert spent <= 10, spent
            # The other queue's new work is claimed at once, beside the full queue.
            enqueue(db, [outbox.NewJob("other.job", {}, queue="other") for _ in range(6)])
            wait_for(lambda: left(db, "other") == 0, what="the other queue's jobs")
            assert (gate.running, held(db, "slow")) == (1, 1)
    finally:
        gate.release.set()


def test_a_place_coming_free_is_taken_at_once_not_at_the_next_poll(db: sa.Engine, dsn: str) -> None:
    """The relay waits for work with a poll interval of a minute: the freed place of a full
    queue, not a poll or a notification, wakes it to claim that queue's next job."""
    gates = [threading.Event() for _ in range(3)]
    order: list[int] = []
    registry = outbox.Registry()

    @registry.handler("one.job", queue="one")
    def one(job: outbox.Job) -> None:
        order.append(job.payload["n"])
        assert gates[job.payload["n"]].wait(60), "never released"

    registry.register("two.job", lambda job: None, queue="two")
    enqueue(db, [outbox.NewJob("one.job", {"n": n}, queue="one") for n in range(3)])
    try:
        with running_relay(
            registry, dsn, queue_limits={"one": 1, "two": 1}, poll_interval=timedelta(minutes=1)
        ):
            wait_for(lambda: order == [0], what="the first job to run")
            gates[0].set()
            wait_for(lambda: order == [0, 1], timeout=10, what="the next job, well before a poll")
            gates[1].set()
            wait_for(lambda: order == [0, 1, 2], timeout=10, what="the last job")
            gates[2].set()
            wait_for(lambda: left(db, "one") == 0, what="all done")
    finally:
        for gate in gates:
            gate.set()


def test_the_command_line_runs_each_process_with_the_limits_and_their_sum_of_threads(
    dsn: str, db: sa.Engine, tmp_path: Path
) -> None:
    log_path = tmp_path / "relay.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")}
    env |= {"OUTBOX_DSN": dsn, "OUTBOX_LEASE": "3s", "OUTBOX_QUEUES": "limited-a=2,limited-b=5"}
    with log_path.open("wb") as log:
        supervisor = subprocess.Popen(
            [sys.executable, "-m", "outbox", "relay", "--app", "tests.chaos.app:registry",
             "--processes", "2", "--metrics-addr", "off", "--log-format", "json"],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip
    try:

        def announced() -> list[Any] | None:
            assert supervisor.poll() is None, log_path.read_text()
            with db.connect() as conn:
                rows = conn.execute(
                    sa.text("SELECT queues, concurrency FROM outbox_relays WHERE pid <> :me"),
                    {"me": os.getpid()},
                ).all()
            return rows if len(rows) == 2 else None

        rows = wait_for(announced, timeout=60, what="both relay processes to announce")
        assert [(list(q), c) for q, c in rows] == [(["limited-a", "limited-b"], 7)] * 2
    finally:
        supervisor.send_signal(signal.SIGTERM)
        try:
            code = supervisor.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(supervisor.pid, signal.SIGKILL)
            supervisor.wait(10)
            raise
    assert code == 0, log_path.read_text()
