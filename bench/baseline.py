"""The limit: outbox's claim, delete and history insert written by hand, no Python per job.

    python -m bench.baseline --jobs N [--analyze] [--batch 100] [--timeout 900]

In a fresh database migrated to outbox's schema, the drain's fill (``bench.relay.fill``:
N ``bench.noop`` jobs in one transaction, then with ``--analyze`` an ANALYZE of the
database; neither timed). Then one worker process (``python -m bench.baseline --worker``:
psycopg and nothing else, one autocommit connection) repeats until a claim finds nothing:

- claim, one statement as ``relay/sql/claim.sql``'s ``claim_batch`` for one queue: the
  ready jobs in claim order (the head of their key only), ``FOR UPDATE SKIP LOCKED``,
  ``--batch`` of them, updated by address to running with a lease, a ``claimed`` history row
  each;
- complete, one statement as ``relay/sql/complete.sql``'s ``complete_batch`` for
  successes: the jobs deleted by primary key, fenced on relay, lease and attempt, a
  ``succeeded`` history row each.

The claimed jobs' ids and attempts come back as one text array each and go back as they
came: no Python object per job. No handler, no thread, no sealing: what outbox's relay
adds to this (and its drain waits for every history row to be sealed) is its own cost.

Timed like the other drains of ``python -m bench``: from the moment before the worker is
started until the queue is empty (polled every 0.02 s). One JSON line on stdout, with the
worker's own rate from its first claim to its last commit as ``sustained_jobs_per_s``.
Uses OUTBOX_DSN, else 127.0.0.1:5432, else the embedded server, in a database of its own.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parents[1]
ENV_DSN = "BENCH_BASELINE_DSN"
QUEUE = "default"

CLAIM = """
WITH chosen AS (
    SELECT j.ctid AS tid
    FROM outbox_jobs AS j
    WHERE j.state = 'pending'
      AND j.queue = %(queue)s
      AND j.run_at <= now()
      AND NOT j.isolated
      AND (
          j.key IS NULL
          OR NOT EXISTS (SELECT 1 FROM outbox_jobs AS p WHERE p.key = j.key AND p.id < j.id)
      )
    ORDER BY j.priority, j.run_at, j.id
    LIMIT %(limit)s
    FOR UPDATE OF j SKIP LOCKED
),
claimed AS (
    UPDATE outbox_jobs AS j
    SET state = 'running',
        attempt = j.attempt + 1,
        relay = %(relay)s,
        claimed_at = now(),
        lease_expires_at = now() + CAST('30 seconds' AS interval)
    WHERE j.ctid = ANY(ARRAY(SELECT tid FROM chosen))
    RETURNING j.uuid, j.type, j.queue, j.key, j.attempt
),
recorded AS (
    INSERT INTO outbox_history (job_uuid, event, type, queue, key, attempt, relay)
    SELECT uuid, 'claimed', type, queue, key, attempt, %(relay)s FROM claimed
)
SELECT count(*), CAST(array_agg(uuid) AS text), CAST(array_agg(attempt) AS text)
FROM claimed
"""

COMPLETE = """
WITH deleted AS (
    DELETE FROM outbox_jobs AS j
    WHERE j.uuid = ANY(CAST(%(uuid)s AS uuid[]))
      AND j.relay = %(relay)s AND j.lease_expires_at IS NOT NULL
      AND j.attempt = (CAST(%(attempt)s AS integer[]))[
          array_position(CAST(%(uuid)s AS uuid[]), j.uuid)]
    RETURNING j.uuid, j.type, j.queue, j.key, j.attempt
)
INSERT INTO outbox_history (job_uuid, event, type, queue, key, attempt, relay, duration_ms)
SELECT uuid, 'succeeded', type, queue, key, attempt, %(relay)s, 0 FROM deleted
"""


def work(dsn: str, batch: int, deadline: float) -> dict[str, Any]:
    """Claim and complete until a claim finds nothing; the worker's own timings."""
    relay = f"baseline-{os.getpid()}"
    jobs = claims = 0
    first = last = 0.0
    with psycopg.connect(dsn, autocommit=True, application_name="bench-baseline") as conn:
        while time.perf_counter() < deadline:
            row = conn.execute(CLAIM, {"queue": QUEUE, "limit": batch, "relay": relay}).fetchone()
            count = 0 if row is None else int(row[0])
            if not count:
                break
            assert row is not None
            if not claims:
                first = time.perf_counter()
            conn.execute(COMPLETE, {"uuid": row[1], "attempt": row[2], "relay": relay})
            last = time.perf_counter()
            jobs += count
            claims += 1
    return {"jobs": jobs, "claims": claims, "working_s": last - first}


def worker_main(batch: int, timeout: float) -> int:
    result = work(os.environ[ENV_DSN], batch, time.perf_counter() + timeout)
    print(json.dumps(result), flush=True)
    return 0


def drain(args: argparse.Namespace) -> dict[str, Any]:
    """Fill, then time one worker process until the queue is empty."""
    import sqlalchemy as sa

    from bench.relay import fill
    from outbox.database import create_engine, libpq_dsn
    from outbox.testing import server_dsn, temporary_database

    with temporary_database(server_dsn(), prefix="outbox_baseline") as url:
        dsn = libpq_dsn(url)
        engine = create_engine(url, poolclass=sa.NullPool)
        try:
            fill(engine, args.jobs, analyze=args.analyze)
        finally:
            engine.dispose()
        env = {**os.environ, ENV_DSN: dsn}
        command = [sys.executable, "-m", "bench.baseline", "--worker", "--batch", str(args.batch),
                   "--timeout", str(args.timeout)]  # fmt: skip
        with psycopg.connect(dsn, autocommit=True) as probe:
            started = time.perf_counter()
            worker = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE)
            try:
                deadline = started + args.timeout
                while True:
                    row = probe.execute("SELECT EXISTS (SELECT FROM outbox_jobs)").fetchone()
                    if row is not None and not row[0]:
                        break
                    if worker.poll() is not None:
                        raise RuntimeError(f"the worker exited with code {worker.returncode}")
                    if time.perf_counter() > deadline:
                        raise TimeoutError(f"jobs left after {args.timeout:g}s")
                    time.sleep(0.02)
                elapsed = time.perf_counter() - started
                stdout, _ = worker.communicate(timeout=60)
            finally:
                if worker.poll() is None:
                    worker.kill()
                    worker.wait()
            own = json.loads(stdout.decode().strip().splitlines()[-1])
            row = probe.execute(
                "SELECT count(*) FROM outbox_history WHERE event = 'succeeded'"
            ).fetchone()
            if row is None or row[0] != args.jobs:
                raise RuntimeError(f"{row and row[0]} of {args.jobs} jobs succeeded")
            version = probe.execute("SHOW server_version").fetchone()
    working = float(own["working_s"])
    return {
        "system": "baseline",
        "version": f"PostgreSQL {version[0] if version else '?'}",
        "workload": "drain",
        "config": {
            "processes": 1,
            "claim": args.batch,
            "statements": "claim + complete per batch",
        },
        "preparation": "after ANALYZE" if args.analyze else "fresh burst, no ANALYZE",
        "jobs": args.jobs,
        "seconds": round(elapsed, 3),
        "jobs_per_s": round(args.jobs / elapsed, 1),
        "claims": own["claims"],
        "sustained_jobs_per_s": round(args.jobs / working, 1) if working > 0 else None,
    }


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=100, help="jobs per claim statement")
    parser.add_argument("--analyze", action="store_true", help="ANALYZE after the fill (not timed)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds the drain may take")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--workload", choices=["drain"], default="drain", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker_main(args.batch, args.timeout)
    # A SIGTERM (a timeout in python -m bench) still stops the worker and drops the database.
    signal.signal(signal.SIGTERM, _terminate)
    print(json.dumps(drain(args)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
