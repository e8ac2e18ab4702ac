"""Relay throughput: N no-op jobs drained by ``outbox relay`` processes, history on.

    python -m bench.relay [--jobs 50000] [--processes 1] [--concurrency 16] [--claim-batch N]
                          [--type bench.noop|bench.noop_session] [--seal on|off|both]
                          [--no-analyze]

Enqueues first and runs ANALYZE (neither timed; ``--no-analyze``: a fresh burst), then
starts the relay and times from its start until the queue is empty; with sealing on, also
until every history row is sealed. It prints a second rate without the relay's start
(imports, connections, schema check): from the first claim to the last completion, as
history dates them. ``--seal both`` runs the same workload with sealing off then on, each in
a fresh database. Uses OUTBOX_DSN, else 127.0.0.1:5432, else the embedded server, in a
database of its own.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import Session

import outbox
from bench import compile_sources
from outbox.database import create_engine
from outbox.testing import server_dsn, temporary_database

ROOT = Path(__file__).resolve().parents[1]


#: From the first claim to the last completion, as history dates them: the drain without the
#: relay's start (imports, connections, the schema check).
WORKING = """
    SELECT extract(epoch FROM max(at) FILTER (WHERE event = 'succeeded')
                             - min(at) FILTER (WHERE event = 'claimed'))
    FROM outbox_history
"""

#: Transactions that claimed jobs, and that recorded their success: how large the relay's
#: batches were.
BATCHES = """
    SELECT count(DISTINCT xid) FILTER (WHERE event = 'claimed'),
           count(DISTINCT xid) FILTER (WHERE event = 'succeeded')
    FROM outbox_history
"""

UNSEALED = """
    SELECT EXISTS (SELECT FROM outbox_history WHERE xid >=
                   (SELECT coalesce(max(xid_to), 0) FROM outbox_seals))
"""


def fill(engine: sa.Engine, jobs: int, job_type: str = "bench.noop", *, analyze: bool) -> None:
    """Enqueue ``jobs`` jobs in one transaction; with ``analyze``, then ANALYZE the database.

    The two preparations of ``python -m bench``'s drain: "after ANALYZE" (planner statistics
    of the filled tables) and "fresh burst, no ANALYZE" (tables never analysed, as a burst
    into new tables finds them). The ANALYZE is of the whole (fresh) database, the statement
    the peer drivers run on theirs with ``--analyze``.
    """
    with Session(engine) as session:
        outbox.enqueue_many(session, [outbox.NewJob(job_type, {"n": n}) for n in range(jobs)])
        session.commit()
    if analyze:
        with engine.begin() as conn:
            conn.execute(sa.text("ANALYZE"))


def drain(
    dsn: str, args: argparse.Namespace, seal: bool
) -> tuple[float, float, float | None, int, tuple[int, int]]:
    """Seconds to drain from the relay's start, seconds from its first claim to its last
    completion, seconds until all is sealed, the relay's exit code, and the number of claim
    and completion transactions."""
    env = {
        **os.environ,
        **({"OUTBOX_CLAIM_BATCH": str(args.claim_batch)} if args.claim_batch else {}),
        "OUTBOX_SEAL_INTERVAL": "1s" if seal else "0",
        "OUTBOX_DSN": dsn,  # never on a command line: it may hold a password
    }
    compile_sources()
    relay = subprocess.Popen(
        [sys.executable, "-m", "outbox", "relay", "--app", "bench.noop:registry",
         "--processes", str(args.processes), "--concurrency", str(args.concurrency),
         "--log-level", "warning", "--metrics-addr", "off"],
        cwd=ROOT, env=env,
    )  # fmt: skip
    engine = create_engine(dsn, poolclass=sa.NullPool)
    started = time.perf_counter()
    try:
        deadline = started + args.timeout
        while time.perf_counter() < deadline:
            with engine.connect() as conn:
                if not conn.execute(sa.text("SELECT EXISTS (SELECT 1 FROM outbox_jobs)")).scalar():
                    break
            time.sleep(0.02)
        else:
            raise SystemExit(f"the relay did not drain {args.jobs} jobs in {args.timeout}s")
        elapsed = time.perf_counter() - started
        sealed = None
        while seal and time.perf_counter() < deadline:
            with engine.connect() as conn:
                if not conn.execute(sa.text(UNSEALED)).scalar():
                    sealed = time.perf_counter() - started
                    break
            time.sleep(0.05)
        with engine.connect() as conn:
            working = float(conn.execute(sa.text(WORKING)).scalar_one())
            claims, completions = conn.execute(sa.text(BATCHES)).one()
    finally:
        relay.send_signal(signal.SIGTERM)
        code = relay.wait(60)
        engine.dispose()
    return elapsed, working, sealed, code, (int(claims), int(completions))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=50_000)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--claim-batch", type=int, default=None, help="the relay's ceiling (default: its own)"
    )
    parser.add_argument(
        "--type", default="bench.noop", choices=["bench.noop", "bench.noop_session"]
    )
    parser.add_argument("--seal", choices=["on", "off", "both"], default="on")
    parser.add_argument(
        "--analyze",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="ANALYZE after the fill, before the relay starts (default: on)",
    )
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args(argv)
    command = "python -m bench.relay " + shlex.join(sys.argv[1:] if argv is None else argv)
    print(f"$ {command}")
    codes = [
        run_once(args, seal)
        for seal in {"on": [True], "off": [False], "both": [False, True]}[args.seal]
    ]
    return max(codes)


def run_once(args: argparse.Namespace, seal: bool) -> int:
    with temporary_database(server_dsn(), prefix="outbox_bench") as dsn:
        engine = create_engine(dsn)
        fill(engine, args.jobs, args.type, analyze=args.analyze)
        engine.dispose()
        elapsed, working, sealed, code, (claims, completions) = drain(dsn, args, seal)
    sealing = f"sealing on, all sealed after {sealed:.2f}s" if sealed else "sealing off"
    print(
        f"{args.jobs:,} {args.type} jobs, {args.processes} process(es) x {args.concurrency} "
        f"threads, claim batch {args.claim_batch or 'default'}, {sealing}: {elapsed:.2f}s = "
        f"{args.jobs / elapsed:,.0f} jobs/s from the relay's start; first claim to last "
        f"completion {working:.2f}s = {args.jobs / working:,.0f} jobs/s (relay exit code {code})"
    )
    print(
        f"  {claims:,} claims of {args.jobs / max(claims, 1):,.0f} jobs on average, "
        f"{completions:,} completions of {args.jobs / max(completions, 1):,.0f}"
    )
    return 0 if code == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
