"""Enqueue throughput: bulk ``enqueue_many`` in one transaction, and one job per transaction.

    python -m bench.enqueue [--jobs 100000] [--rounds 3] [--clients 4] [--single 5000]

Uses ``OUTBOX_DSN``, else PostgreSQL on 127.0.0.1:5432, else the embedded server,
and a database of its own that it drops at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import shlex
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence

import sqlalchemy as sa
from sqlalchemy.orm import Session

import outbox
from outbox.database import create_engine
from outbox.testing import server_dsn, temporary_database


def timed_clients(clients: Sequence[Callable[[], None]]) -> float:
    """Seconds from starting one thread per client until the last has returned."""
    threads = [threading.Thread(target=client) for client in clients]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    return elapsed


def bulk(engine: sa.Engine, jobs: int, keys: int) -> float:
    batch = [
        outbox.NewJob(
            "bench.noop",
            {"n": i, "account": f"acc-{i % 1000}"},
            key=f"acc-{i % keys}" if keys else None,
        )
        for i in range(jobs)
    ]
    _empty(engine)
    with Session(engine) as session:
        started = time.perf_counter()
        outbox.enqueue_many(session, batch)
        session.commit()
        elapsed = time.perf_counter() - started
    _empty(engine)
    return jobs / elapsed


def single(engine: sa.Engine, jobs: int, clients: int) -> float:
    per_client = jobs // clients

    def client(c: int) -> None:
        with Session(engine) as session:
            for i in range(per_client):
                outbox.enqueue(session, "bench.noop", {"n": i}, key=f"c{c}-{i % 50}")
                session.commit()

    elapsed = timed_clients([functools.partial(client, c) for c in range(clients)])
    _empty(engine)
    return per_client * clients / elapsed


def _empty(engine: sa.Engine) -> None:
    """Empty tables and, where the role may, a checkpoint: so that no round pays for the
    dirty pages of the one before it."""
    with engine.begin() as conn:  # history is append-only: its triggers set aside for this
        conn.execute(sa.text("SET LOCAL session_replication_role = replica"))
        conn.execute(sa.text("TRUNCATE outbox_jobs, outbox_history, outbox_idempotency"))
    with contextlib.suppress(sa.exc.DBAPIError), engine.connect() as conn:
        conn.execute(sa.text("CHECKPOINT"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000, help="jobs per bulk transaction")
    parser.add_argument("--rounds", type=int, default=3, help="bulk rounds (median reported)")
    parser.add_argument("--single", type=int, default=5_000, help="jobs enqueued one per commit")
    parser.add_argument("--clients", type=int, default=4, help="threads for the single test")
    args = parser.parse_args(argv)
    command = "python -m bench.enqueue " + shlex.join(sys.argv[1:] if argv is None else argv)
    with temporary_database(server_dsn(), prefix="outbox_bench") as dsn:
        engine = create_engine(dsn, pool_size=args.clients + 1)
        with engine.connect() as conn:
            version = conn.execute(sa.text("SHOW server_version")).scalar_one()
        keyed = [bulk(engine, args.jobs, 1000) for _ in range(args.rounds)]
        unkeyed = [bulk(engine, args.jobs, 0) for _ in range(args.rounds)]
        one = single(engine, args.single, args.clients) if args.single else 0.0
        engine.dispose()
    print(f"$ {command}")
    print(f"PostgreSQL {version}")
    print(f"{'workload':<44} {'jobs/s':>10}")
    for label, rates in (("1,000 keys", keyed), ("no keys", unkeyed)):
        rounds = ", ".join(f"{r:,.0f}" for r in rates)
        print(
            f"{f'enqueue_many {args.jobs:,} jobs in 1 txn, {label}':<44} "
            f"{statistics.median(rates):>10,.0f}   (rounds: {rounds})"
        )
    if args.single:
        print(f"{f'enqueue + commit, {args.clients} clients':<44} {one:>10,.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
