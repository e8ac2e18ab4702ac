"""A steady load while a long REPEATABLE READ transaction pins the xmin horizon.

    python -m bench.pinned [--rate 500] [--normal 60] [--pinned 300] [--after 60] [--no-pin]

A relay at its defaults (sealing on) runs ``bench.latency`` jobs; one producer enqueues and
commits them one at a time at ``--rate`` a second throughout. Three phases follow one
another: ``normal``, then ``pinned``, while another session holds a REPEATABLE READ
transaction open after reading ``outbox_history`` (a long reporting query: its snapshot
keeps VACUUM from removing the rows deleted since; being read-only, it has no transaction
id, so the sealer, which waits only for writers, goes on), then ``after``, once that
transaction has ended. For each phase it prints the jobs handled
a second, commit-to-handler latency (p50, p99), and the most dead tuples of ``outbox_jobs``
(and their number at the phase's end) and the longest seal lag (the age of the oldest
unsealed history row), sampled every 2 s;
and the vacuums of ``outbox_jobs`` seen between samples; then each pinned and after figure as
a ratio of the normal one, latency over each 10 s of the after phase, and how long after the
transaction ended latency stayed within 20% of normal for good. DESIGN.md section 6 asks for
throughput and latency within 20% of normal while pinned, and recovery after. ``--no-pin``
runs the same phases with no transaction held open: what the same minutes cost without one.

Uses OUTBOX_DSN, else PostgreSQL on 127.0.0.1:5432, else the embedded server, and a
database of its own that it drops at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import shlex
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy as sa

import outbox
from bench import latency
from bench.ours import percentile, relay, wait_until
from outbox.database import create_engine, libpq_dsn
from outbox.sql import queries
from outbox.testing import server_dsn, temporary_database

PHASES = ("normal", "pinned", "after")
DEAD = (
    "SELECT coalesce(n_dead_tup, 0), vacuum_count + autovacuum_count FROM pg_stat_user_tables "
    "WHERE relname = 'outbox_jobs'"
)
WINDOW = 10.0  # seconds of the after phase a latency figure covers
WITHIN = 1.2  # recovered: latency within this ratio of normal
SEAL_LAG = queries["seal_lag"]
WAITING = "SELECT EXISTS (SELECT FROM outbox_jobs)"


@dataclasses.dataclass
class Phase:
    name: str
    started: float = 0.0  # time.time()
    ended: float = 0.0
    committed: dict[Any, float] = dataclasses.field(default_factory=dict)
    dead: list[int] = dataclasses.field(default_factory=list)
    seal_lag: list[float] = dataclasses.field(default_factory=list)
    vacuums: list[int] = dataclasses.field(default_factory=list)  # the table's count so far


class Sampler(threading.Thread):
    """Every ``interval`` seconds, the dead tuples of outbox_jobs and the seal lag, into the
    phase running then."""

    def __init__(self, dsn: str, interval: float = 2.0) -> None:
        super().__init__(daemon=True)
        self.dsn, self.interval = dsn, interval
        self.phase: Phase | None = None
        self.error: BaseException | None = None
        self._done = threading.Event()

    def run(self) -> None:
        try:
            with psycopg.connect(libpq_dsn(self.dsn), autocommit=True) as conn:
                while not self._done.wait(self.interval):
                    phase = self.phase
                    if phase is None:
                        continue
                    dead = conn.execute(DEAD).fetchone()
                    lag = conn.execute(SEAL_LAG).fetchone()
                    phase.dead.append(int(dead[0]) if dead else 0)
                    phase.vacuums.append(int(dead[1]) if dead else 0)
                    phase.seal_lag.append(float(lag[0]) if lag else 0.0)
        except BaseException as exc:  # reported by stop(): a run without samples says why
            self.error = exc

    def stop(self) -> None:
        self._done.set()
        self.join(10)
        if self.error is not None:
            raise RuntimeError(f"the sampler failed: {self.error}") from self.error


def produce(producer: sa.Connection, phase: Phase, rate: float, seconds: float) -> None:
    """Enqueue and commit one job at a time at ``rate`` a second for ``seconds``."""
    phase.started = time.time()
    started = time.perf_counter()
    for n in range(int(rate * seconds)):
        pause = started + n / rate - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        handle = outbox.enqueue(producer, latency.TYPE, {"n": n})
        producer.commit()
        phase.committed[handle.uuid] = time.time()
    phase.ended = time.time()


def pin(dsn: str) -> psycopg.Connection[Any]:
    """A session holding a REPEATABLE READ snapshot open, as a long report would."""
    conn = psycopg.connect(libpq_dsn(dsn))
    conn.execute("SET idle_in_transaction_session_timeout = 0")
    conn.commit()
    conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
    conn.execute("SELECT count(*) FROM outbox_history").fetchone()
    return conn


def summary(phase: Phase, seen: dict[Any, float]) -> dict[str, float]:
    ms = sorted((seen[u] - at) * 1000 for u, at in phase.committed.items())
    handled = sum(1 for at in seen.values() if phase.started <= at < phase.ended)
    return {
        "rate": handled / (phase.ended - phase.started),
        "p50": percentile(ms, 50),
        "p99": percentile(ms, 99),
        "dead": float(max(phase.dead, default=0)),
        "dead_end": float(phase.dead[-1] if phase.dead else 0),
        "lag": max(phase.seal_lag, default=0.0),
        "vacuums": float(max(phase.vacuums, default=0) - min(phase.vacuums, default=0)),
    }


def windows(phase: Phase, seen: dict[Any, float]) -> list[tuple[float, float]]:
    """p50 and p99 of the jobs committed in each WINDOW seconds of the phase."""
    last = max(0, math.ceil((phase.ended - phase.started) / WINDOW) - 1)
    spans: dict[int, list[float]] = {}
    for u, at in phase.committed.items():
        index = min(last, int((at - phase.started) // WINDOW))  # the last commit: in the last
        spans.setdefault(index, []).append((seen[u] - at) * 1000)
    return [
        (percentile(sorted(ms), 50), percentile(sorted(ms), 99)) for _, ms in sorted(spans.items())
    ]


def recovered_after(spans: list[tuple[float, float]], normal: dict[str, float]) -> float | None:
    """Seconds into the phase from which every window's p50 and p99 stay within WITHIN of
    normal; None if the last window is not."""
    good = [p50 <= WITHIN * normal["p50"] and p99 <= WITHIN * normal["p99"] for p50, p99 in spans]
    if not good or not good[-1]:
        return None
    first = len(good)
    while first > 0 and good[first - 1]:
        first -= 1
    return first * WINDOW


def report(
    results: dict[str, dict[str, float]],
    after: list[tuple[float, float]],
    args: argparse.Namespace,
) -> None:
    print(
        f"{args.rate:g} jobs/s offered; phases of {args.normal:g}s normal, {args.pinned:g}s "
        f"pinned, {args.after:g}s after"
    )
    print("phase   handled/s  p50 ms  p99 ms  dead tuples: max, at end  seal lag s (max)  vacuums")
    for name in PHASES:
        r = results[name]
        print(
            f"{name:<7} {r['rate']:9.1f} {r['p50']:7.2f} {r['p99']:7.2f} {r['dead']:16,.0f} "
            f"{r['dead_end']:8,.0f} {r['lag']:17.1f} {r['vacuums']:8.0f}"
        )
    normal = results["normal"]
    for name in ("pinned", "after"):
        r = results[name]
        print(
            f"{name} / normal: handled/s {r['rate'] / normal['rate']:.2f}, "
            f"p50 {r['p50'] / normal['p50']:.2f}, p99 {r['p99'] / normal['p99']:.2f}"
        )
    print(f"after, each {WINDOW:g}s: p50 " + " ".join(f"{p50:.2f}" for p50, _ in after))
    print(f"after, each {WINDOW:g}s: p99 " + " ".join(f"{p99:.2f}" for _, p99 in after))
    back = recovered_after(after, normal)
    within = f"within {WITHIN - 1:.0%} of normal"
    print(
        f"latency {within} for good {back:g}s after the transaction ended"
        if back is not None
        else f"latency not yet {within} at the end of the after phase"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rate", type=float, default=500.0, help="jobs a second (default 500)")
    parser.add_argument("--normal", type=float, default=60.0, help="seconds before pinning")
    parser.add_argument("--pinned", type=float, default=300.0, help="seconds pinned")
    parser.add_argument("--after", type=float, default=60.0, help="seconds after")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to drain at the end")
    parser.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="hold the transaction open in the pinned phase (default: on; off: a control run)",
    )
    args = parser.parse_args(argv)
    if args.rate <= 0 or min(args.normal, args.pinned, args.after) <= 0:
        parser.error("--rate and each phase's seconds must be above 0")
    print("$ python -m bench.pinned " + shlex.join(sys.argv[1:] if argv is None else argv))
    relay_args = argparse.Namespace(seal="on", batch_size=None, concurrency=None, processes=1)
    folder = Path(tempfile.mkdtemp(prefix="outbox-pinned-"))
    os.environ["BENCH_LATENCY_DIR"] = str(folder)  # the relay inherits it
    phases = {name: Phase(name) for name in PHASES}
    try:
        with temporary_database(server_dsn(), prefix="outbox_bench") as dsn:
            engine = create_engine(dsn)
            sampler = Sampler(dsn)
            try:
                with relay(dsn, "bench.latency:registry", relay_args), engine.connect() as prod:
                    outbox.enqueue(prod, latency.TYPE, {"warmup": True})
                    prod.commit()
                    wait_until(engine, WAITING, time.perf_counter() + args.timeout, 0.05)
                    sampler.start()
                    sampler.phase = phases["normal"]
                    produce(prod, phases["normal"], args.rate, args.normal)
                    pinned = pin(dsn) if args.pin else None
                    try:
                        sampler.phase = phases["pinned"]
                        produce(prod, phases["pinned"], args.rate, args.pinned)
                    finally:
                        if pinned is not None:
                            pinned.close()  # the report ends: its snapshot goes
                    sampler.phase = phases["after"]
                    produce(prod, phases["after"], args.rate, args.after)
                    wait_until(engine, WAITING, time.perf_counter() + args.timeout, 0.05)
            finally:
                if sampler.is_alive():
                    sampler.stop()
                engine.dispose()
        seen = latency.read(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    missing = sum(1 for p in phases.values() for u in p.committed if u not in seen)
    if missing:
        raise SystemExit(f"{missing} jobs were never handled")
    results = {name: summary(phase, seen) for name, phase in phases.items()}
    report(results, windows(phases["after"], seen), args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
