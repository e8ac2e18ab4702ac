"""Endurance: a million jobs through one relay, a window at a time, and what the tables weigh after.

    python -m bench.endurance [--jobs 1000000] [--window 100000] [--chunk 10000]
                              [--threshold W/10] [--processes 1] [--concurrency 16]
                              [--seal on|off] [--timeout 7200]

A relay runs throughout (sealing on by default). The producer enqueues a window of
``--window`` jobs (``enqueue_many``, ``--chunk`` jobs per transaction), waits until fewer
than ``--threshold`` are pending, then enqueues the next: about a window's worth of jobs
is always in ``outbox_jobs``, being inserted and deleted, which is what makes dead tuples
and bloat. ``--jobs 200000`` makes a quick run.

Prints, per window, how long the enqueue took and the queue's size then; at the end, the
throughput of each window of completions (from the ``succeeded`` rows of
``outbox_history``), the relay's peak RSS, and the size of each outbox table, its heap and
its indexes. Uses OUTBOX_DSN, else 127.0.0.1:5432, else the embedded server, in a
database of its own that it drops at the end.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import time

import sqlalchemy as sa
from sqlalchemy.orm import Session

import outbox
from bench.ours import UNSEALED, Timeout, relay, wait_until
from outbox.database import create_engine
from outbox.testing import server_dsn, temporary_database

TABLES = ("outbox_jobs", "outbox_history", "outbox_seals", "outbox_idempotency")

WINDOWS = """
    WITH done AS (
        SELECT at, (row_number() OVER (ORDER BY at, id) - 1) / :window AS win
        FROM outbox_history WHERE event = 'succeeded'
    )
    SELECT win, count(*), min(at), max(at) FROM done GROUP BY win ORDER BY win
"""

TABLE_SIZES = """
    SELECT c.relname,
           pg_size_pretty(pg_total_relation_size(c.oid)),
           pg_size_pretty(pg_relation_size(c.oid)),
           pg_size_pretty(pg_indexes_size(c.oid)),
           coalesce(s.n_live_tup, 0), coalesce(s.n_dead_tup, 0),
           coalesce(s.autovacuum_count, 0), coalesce(s.autoanalyze_count, 0)
    FROM pg_class c LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
    WHERE c.relname = ANY(:tables) AND c.relkind = 'r'
    ORDER BY array_position(:tables, c.relname::text)
"""

INDEX_SIZES = """
    SELECT t.relname, i.relname, pg_size_pretty(pg_relation_size(i.oid))
    FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid
    WHERE t.relname = ANY(:tables)
    ORDER BY array_position(:tables, t.relname::text), i.relname
"""

JOBS_SIZE = "SELECT pg_size_pretty(pg_total_relation_size('outbox_jobs'))"


def enqueue_window(engine: sa.Engine, start: int, count: int, chunk: int) -> float:
    began = time.perf_counter()
    for first in range(start, start + count, chunk):
        last = min(first + chunk, start + count)
        with Session(engine) as session:
            outbox.enqueue_many(
                session, [outbox.NewJob("bench.noop", {"n": n}) for n in range(first, last)]
            )
            session.commit()
    return time.perf_counter() - began


def pending(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT count(*) FROM outbox_jobs")).scalar_one())


def run(args: argparse.Namespace) -> int:
    relay_args = argparse.Namespace(
        processes=args.processes, concurrency=args.concurrency, batch_size=None, seal=args.seal
    )
    with temporary_database(server_dsn(), prefix="outbox_bench") as dsn:
        engine = create_engine(dsn, pool_size=2)
        try:
            with relay(dsn, "bench.noop:registry", relay_args) as (process, sampler):
                started = time.perf_counter()
                deadline = started + args.timeout
                enqueued = 0
                print(f"{'window':>6} {'enqueued':>10} {'enqueue s':>10} {'pending':>8} "
                      f"{'outbox_jobs':>12} {'elapsed s':>10}")  # fmt: skip
                while enqueued < args.jobs:
                    count = min(args.window, args.jobs - enqueued)
                    took = enqueue_window(engine, enqueued, count, args.chunk)
                    enqueued += count
                    if enqueued < args.jobs:
                        while (left := pending(engine)) >= args.threshold:
                            if time.perf_counter() > deadline or process.poll() is not None:
                                raise Timeout(f"{left} jobs still pending")
                            time.sleep(0.5)
                    else:
                        left = pending(engine)
                    with engine.connect() as conn:
                        size = conn.execute(sa.text(JOBS_SIZE)).scalar_one()
                    print(f"{enqueued // args.window:>6} {enqueued:>10,} {took:>10.2f} "
                          f"{left:>8,} {size:>12} {time.perf_counter() - started:>10.1f}",
                          flush=True)  # fmt: skip
                wait_until(engine, "SELECT EXISTS (SELECT FROM outbox_jobs)", deadline, 0.2)
                drained = time.perf_counter() - started
                if args.seal == "on":
                    wait_until(engine, UNSEALED, deadline, 0.2)
                sealed = time.perf_counter() - started
                if process.poll() is not None:
                    raise RuntimeError(f"the relay exited with code {process.returncode}")
            report(engine, args, drained, sealed, sampler.peak / 1024 / 1024)
        finally:
            engine.dispose()
    return 0


def report(
    engine: sa.Engine, args: argparse.Namespace, drained: float, sealed: float, rss: float
) -> None:
    tables = list(TABLES)
    with engine.connect() as conn:
        windows = conn.execute(sa.text(WINDOWS), {"window": args.window}).all()
        sizes = conn.execute(sa.text(TABLE_SIZES), {"tables": tables}).all()
        indexes = conn.execute(sa.text(INDEX_SIZES), {"tables": tables}).all()
    print()
    print(f"{args.jobs:,} jobs drained in {drained:.1f}s = {args.jobs / drained:,.0f} jobs/s"
          + (f"; all history sealed after {sealed:.1f}s" if args.seal == "on" else ""))  # fmt: skip
    print(f"relay peak RSS (supervisor and children): {rss:,.1f} MiB")
    print()
    print("Throughput per window of completions (history 'succeeded' timestamps):")
    print(f"{'window':>6} {'jobs':>8} {'seconds':>8} {'jobs/s':>8}")
    previous = windows[0][2] if windows else None
    for win, count, _first, last in windows:
        seconds = (last - previous).total_seconds()
        rate = f"{count / seconds:>8,.0f}" if seconds > 0 else f"{'-':>8}"
        print(f"{win + 1:>6} {count:>8,} {seconds:>8.1f} {rate}")
        previous = last
    print()
    print("Table sizes at the end:")
    print(f"{'table':<20} {'total':>10} {'heap':>10} {'indexes':>10} {'live':>10} {'dead':>10} "
          f"{'autovacuum':>10} {'autoanalyze':>11}")  # fmt: skip
    for name, total, heap, idx, live, dead, vacuums, analyzes in sizes:
        print(f"{name:<20} {total:>10} {heap:>10} {idx:>10} {live:>10,} {dead:>10,} "
              f"{vacuums:>10} {analyzes:>11}")  # fmt: skip
    print()
    print(f"{'index':<44} {'size':>10}")
    for table, index, size in indexes:
        print(f"{table + '.' + index:<44} {size:>10}")


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--window", type=int, default=100_000)
    parser.add_argument("--chunk", type=int, default=10_000, help="jobs per enqueue transaction")
    parser.add_argument("--threshold", type=int, help="pending jobs below which the next window "
                        "is enqueued (default: a tenth of the window)")  # fmt: skip
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seal", choices=["on", "off"], default="on")
    parser.add_argument("--timeout", type=float, default=7200, help="seconds for the whole run")
    args = parser.parse_args(argv)
    if args.threshold is None:
        args.threshold = max(1, args.window // 10)
    print("$ python -m bench.endurance " + shlex.join(sys.argv[1:] if argv is None else argv))
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return run(args)
    except Timeout as exc:
        print(f"timed out: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
