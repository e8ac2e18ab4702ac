"""Database CPU per job of each step of the relay's work, one step at a time.

    python -m bench.phases [--jobs 100000] [--batch 500]

Enqueues N jobs, then claims them all in batches, completes them all in batches, and seals
their history, each step alone on one connection, with the relay's own functions. For each
step it prints the wall time and the CPU time of the PostgreSQL backend that ran it (read
from /proc, so only when the server runs on this host), per job. Uses OUTBOX_DSN, else
127.0.0.1:5432, else the embedded server, in a database of its own.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa
from outbox_relay.claim import AttemptLimits, claim_batch
from outbox_relay.complete import complete
from outbox_relay.execute import Outcome

import outbox
from bench.relay import fill
from outbox.audit.seal import seal_all
from outbox.database import create_engine
from outbox.registry import Registry
from outbox.testing import server_dsn, temporary_database

TICKS = os.sysconf("SC_CLK_TCK")


def backend_cpu(conn: sa.Connection) -> float | None:
    """Seconds of CPU the backend serving ``conn`` has used, if it runs on this host."""
    pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
    conn.commit()
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICKS


def measure(name: str, jobs: int, conn: sa.Connection, step: Callable[[], object]) -> None:
    cpu_before, started = backend_cpu(conn), time.perf_counter()
    step()
    wall, cpu_after = time.perf_counter() - started, backend_cpu(conn)
    cpu = "n/a (server not on this host)"
    if cpu_before is not None and cpu_after is not None:
        cpu = f"{(cpu_after - cpu_before) / jobs * 1e6:.1f} us/job"
    print(f"{name:<28} wall {wall:6.2f}s  database CPU {cpu}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args(argv)
    print("$ python -m bench.phases " + shlex.join(sys.argv[1:] if argv is None else argv))
    with temporary_database(server_dsn(), prefix="outbox_bench") as dsn:
        engine = create_engine(dsn)
        fast = create_engine(dsn, isolation_level="AUTOCOMMIT")
        fill(engine, args.jobs, analyze=True)
        with engine.connect() as conn:
            measure("seal (enqueued rows)", args.jobs, conn, lambda: seal_all(conn))
        claimed: list[list[outbox.Job]] = []

        def claim_all(conn: sa.Connection) -> None:
            while jobs := claim_batch(
                conn, queues=["default"], limit=args.batch, lease=timedelta(minutes=5),
                relay="bench", limits=AttemptLimits(default=5, types=("bench.noop",)),
            ):  # fmt: skip
                claimed.append(jobs)

        def complete_all(conn: sa.Connection) -> None:
            for jobs in claimed:
                complete(conn, "bench", [Outcome(job, 0.1) for job in jobs], Registry())

        with fast.connect() as conn:
            measure(f"claim, batches of {args.batch}", args.jobs, conn, lambda: claim_all(conn))
            measure(
                f"complete, batches of {args.batch}", args.jobs, conn, lambda: complete_all(conn)
            )
        with engine.connect() as conn:
            measure("seal (claimed + succeeded)", args.jobs, conn, lambda: seal_all(conn))
        engine.dispose()
        fast.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
