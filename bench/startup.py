"""From starting ``outbox relay`` to its first claim, and its resident memory then.

    python -m bench.startup [--runs 7] [--app bench.noop:registry] [--source]

Each run enqueues one job, notes the database's clock, starts ``outbox relay --app APP`` at
its defaults (metrics off, warnings only) and polls history until the job's ``claimed`` row
appears: the time from the noted clock to that row's time is the start, imports, the
schema check, connections and the first claim included. The relay's resident memory is
read from /proc right after (Linux), then it is stopped with SIGTERM. Prints the median
with min and max; DESIGN.md section 6 asks for a first claim within 0.3 s. The project's
modules are byte-compiled first, as pip compiles an installed package (``--source``: none,
as a checkout where ``PYTHONDONTWRITEBYTECODE`` is set, each start compiling them anew).

Uses OUTBOX_DSN, else PostgreSQL on 127.0.0.1:5432, else the embedded server, and a
database of its own that it drops at the end.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import Session

import outbox
from bench import compile_sources, remove_bytecode
from outbox.database import create_engine
from outbox.testing import server_dsn, temporary_database

ROOT = Path(__file__).resolve().parents[1]
NOW = sa.text("SELECT clock_timestamp()")
CLAIMED = sa.text("SELECT min(at) FROM outbox_history WHERE event = 'claimed' AND at > :since")


def resident_mib(pid: int) -> float | None:
    """The resident set of ``pid`` in MiB, where /proc tells it."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None


def one_start(engine: sa.Engine, dsn: str, app: str, timeout: float) -> tuple[float, float | None]:
    """Seconds from the relay's start to its first claim, and its resident MiB then."""
    with Session(engine) as session:
        outbox.enqueue(session, "bench.noop", {})
        session.commit()
    with engine.connect() as conn:
        since = conn.execute(NOW).scalar_one()
    relay = subprocess.Popen(
        [sys.executable, "-m", "outbox", "relay", "--app", app,
         "--log-level", "warning", "--metrics-addr", "off"],
        cwd=ROOT, env={**os.environ, "OUTBOX_DSN": dsn},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                claimed = conn.execute(CLAIMED, {"since": since}).scalar()
            if claimed is not None:
                return (claimed - since).total_seconds(), resident_mib(relay.pid)
            time.sleep(0.01)
        raise SystemExit(f"the relay claimed nothing within {timeout:g}s")
    finally:
        relay.send_signal(signal.SIGTERM)
        relay.wait(60)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--app", default="bench.noop:registry")
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument(
        "--source", action="store_true",
        help="remove the project's bytecode first and write none, as a source checkout "
        "under PYTHONDONTWRITEBYTECODE: each start then compiles outbox's modules anew",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    print("$ python -m bench.startup " + shlex.join(sys.argv[1:] if argv is None else argv))
    if args.source:
        remove_bytecode()
    else:
        compile_sources()
    with temporary_database(server_dsn(), prefix="outbox_bench") as dsn:
        engine = create_engine(dsn)
        try:
            runs = [one_start(engine, dsn, args.app, args.timeout) for _ in range(args.runs)]
        finally:
            engine.dispose()
    starts = sorted(s for s, _ in runs)
    memory = sorted(m for _, m in runs if m is not None)
    print(
        f"start to first claim, {args.runs} runs: median {statistics.median(starts):.3f} s "
        f"(min {starts[0]:.3f}, max {starts[-1]:.3f})"
    )
    if memory:
        print(f"resident memory at the first claim: median {statistics.median(memory):.1f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
