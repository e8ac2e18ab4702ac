"""outbox under the workloads the peer drivers run, one JSON line at the end.

    python -m bench.ours --workload {enqueue_single,enqueue_bulk,drain,latency} --jobs N
                         [--clients 4] [--processes 1] [--concurrency C] [--batch-size B]
                         [--analyze] [--rate 200] [--seconds 20] [--seal on|off]
                         [--timeout 900]

The relay runs at its own defaults (``outbox relay --app ...`` and nothing else): no
``OUTBOX_*`` variable but the DSN reaches it, unless ``--concurrency``, ``--batch-size`` or
``--seal off`` asks for one.

- enqueue_single: N jobs, ``--clients`` threads, each ``outbox.enqueue`` + commit per job.
- enqueue_bulk: ``outbox.enqueue_many`` of N jobs in one transaction (timed with its commit).
- drain: N ``bench.noop`` jobs enqueued in one transaction first, then with ``--analyze``
  an ANALYZE of the database (neither timed; ``bench.relay.fill``), then ``outbox relay``
  started; timed from the moment before it is started until the queue is empty and, with
  sealing on (the default), every history row is sealed (polled every 0.02 s, as the peer
  drivers poll theirs). Peak RSS is the relay's supervisor plus its children, sampled every
  0.1 s. ``--batch-size`` sets OUTBOX_CLAIM_BATCH (a ceiling; default: the relay's own).
- latency: the relay started and idle first; then ``--rate`` jobs/s for ``--seconds``
  seconds, each enqueued and committed on its own; latency is from the moment the
  commit returned to the moment the handler started (see ``bench/latency.py``).

Runs in a database of its own on OUTBOX_DSN, else 127.0.0.1:5432, else the embedded
server, dropped at the end. The relay gets the DSN in its environment.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import psycopg
import sqlalchemy as sa
from sqlalchemy.orm import Session

import outbox
from bench import compile_sources, latency
from bench.enqueue import timed_clients
from bench.relay import UNSEALED, fill
from outbox import distribution
from outbox.database import create_engine, libpq_dsn
from outbox.settings import Settings
from outbox.testing import server_dsn, temporary_database

ROOT = Path(__file__).resolve().parents[1]
WORKLOADS = ("enqueue_single", "enqueue_bulk", "drain", "latency")
MIB = 1024 * 1024


class Timeout(Exception):
    pass


class RssSampler(threading.Thread):
    """The largest sum of RSS over a process and its descendants, sampled every 0.1 s."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            total = 0
            try:
                members = [self.process, *self.process.children(recursive=True)]
            except psutil.Error:
                return
            for member in members:
                with contextlib.suppress(psutil.Error):
                    total += member.memory_info().rss
            self.peak = max(self.peak, total)
            self._done.wait(self.interval)

    def stop(self) -> float:
        self._done.set()
        self.join(5)
        return self.peak / MIB


def relay_env(dsn: str, args: argparse.Namespace) -> dict[str, str]:
    """The relay's environment: this one without any ``OUTBOX_*`` setting (a stray
    ``OUTBOX_CLAIM_BATCH`` in the caller's shell must not tune it), the DSN, and what the
    options ask for."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")}
    env["OUTBOX_DSN"] = dsn  # never on a command line: it may hold a password
    if args.seal == "off":
        env["OUTBOX_SEAL_INTERVAL"] = "0"
    if args.batch_size:
        env["OUTBOX_CLAIM_BATCH"] = str(args.batch_size)
    if args.concurrency:
        env["OUTBOX_CONCURRENCY"] = str(args.concurrency)
    return env


@dataclasses.dataclass
class Relay:
    process: subprocess.Popen[bytes]
    sampler: RssSampler
    #: perf_counter() just before the relay's process was started.
    started: float


@contextlib.contextmanager
def relay(dsn: str, app: str, args: argparse.Namespace) -> Iterator[Relay]:
    """``outbox relay`` running against ``dsn``, with an RSS sampler on it."""
    command = [sys.executable, "-m", "outbox", "relay", "--app", app,
               "--processes", str(args.processes), "--metrics-addr", "off",
               "--log-level", "warning"]  # fmt: skip
    env = relay_env(dsn, args)
    compile_sources()
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, env=env)
    sampler = RssSampler(process.pid)
    sampler.start()
    try:
        yield Relay(process, sampler, started)
    finally:
        try:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(60)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        finally:
            sampler.stop()


def wait_until(engine: sa.Engine, query: str, deadline: float, pause: float) -> None:
    """Poll until ``query`` answers false."""
    while time.perf_counter() < deadline:
        with engine.connect() as conn:
            if not conn.execute(sa.text(query)).scalar():
                return
        time.sleep(pause)
    raise Timeout(f"still true at the deadline: {' '.join(query.split())}")


def enqueue_single(engine: sa.Engine, args: argparse.Namespace) -> dict[str, Any]:
    per_client = [args.jobs // args.clients] * args.clients
    per_client[0] += args.jobs - sum(per_client)
    errors: list[BaseException] = []

    def client(count: int) -> None:
        try:
            with Session(engine) as session:
                for n in range(count):
                    outbox.enqueue(session, "bench.noop", {"n": n})
                    session.commit()
        except BaseException as exc:
            errors.append(exc)

    elapsed = timed_clients([functools.partial(client, count) for count in per_client])
    if errors:
        raise errors[0]
    return {"config": {"clients": args.clients}, "seconds": elapsed}


def enqueue_bulk(engine: sa.Engine, args: argparse.Namespace) -> dict[str, Any]:
    batch = [outbox.NewJob("bench.noop", {"n": n}) for n in range(args.jobs)]
    with Session(engine) as session:
        started = time.perf_counter()
        outbox.enqueue_many(session, batch)
        session.commit()
        elapsed = time.perf_counter() - started
    return {"config": {"transactions": 1}, "seconds": elapsed}


def relay_config(dsn: str, args: argparse.Namespace) -> dict[str, Any]:
    """The settings the relay runs with, read as it reads them (defaults unless asked)."""
    env = relay_env(dsn, args)
    settings = Settings.load(env)
    tuned = sorted(k for k in env if k.startswith("OUTBOX_") and k != "OUTBOX_DSN")
    return {
        "processes": args.processes,
        "concurrency": settings.concurrency,
        "claim_batch": settings.claim_batch,
        "seal_interval": f"{settings.seal_interval.total_seconds():g}s",
        "set": ",".join(tuned) or "nothing (defaults)",
    }


#: Tables analysed so far, by ANALYZE or autovacuum: a rise during a drain is the relay's
#: upkeep (VACUUM (ANALYZE) outbox_jobs once dead rows pile up, relay/upkeep.py).
ANALYSES = "SELECT coalesce(sum(analyze_count + autoanalyze_count), 0) FROM pg_stat_user_tables"
SUCCEEDED = "SELECT count(*) FROM outbox_history WHERE event = 'succeeded'"


def scalar(probe: psycopg.Connection[Any], query: str) -> int:
    row = probe.execute(query).fetchone()
    return int(row[0]) if row is not None else 0


def poll(probe: psycopg.Connection[Any], query: str, deadline: float) -> None:
    """Poll every 0.02 s until ``query`` answers false: one autocommit statement a look, as
    the peer drivers' probe looks (``bench/peers/peer_common.py``)."""
    while time.perf_counter() < deadline:
        row = probe.execute(query).fetchone()
        if row is not None and not row[0]:
            return
        time.sleep(0.02)
    raise Timeout(f"still true at the deadline: {' '.join(query.split())}")


def drain(engine: sa.Engine, dsn: str, args: argparse.Namespace) -> dict[str, Any]:
    fill(engine, args.jobs, analyze=args.analyze)
    with psycopg.connect(libpq_dsn(dsn), autocommit=True) as probe:
        analyses = scalar(probe, ANALYSES)
        with relay(dsn, "bench.noop:registry", args) as running:
            deadline = running.started + args.timeout
            poll(probe, "SELECT EXISTS (SELECT FROM outbox_jobs)", deadline)
            emptied = time.perf_counter() - running.started
            if args.seal == "on":
                poll(probe, UNSEALED, deadline)
            elapsed = time.perf_counter() - running.started
            if running.process.poll() is not None:
                raise RuntimeError(f"the relay exited with code {running.process.returncode}")
        analyses = scalar(probe, ANALYSES) - analyses
        succeeded = scalar(probe, SUCCEEDED)
    if succeeded != args.jobs:
        raise RuntimeError(f"{succeeded} of {args.jobs} jobs succeeded")
    return {
        "config": relay_config(dsn, args),
        "preparation": "after ANALYZE" if args.analyze else "fresh burst, no ANALYZE",
        "seconds": elapsed,
        # the rate until the queue was empty, and the wait for the last seal after it
        "empty_jobs_per_s": args.jobs / emptied,
        "seal_wait_s": elapsed - emptied,
        "peak_rss_mib": running.sampler.peak / MIB,
        "analyses_during": analyses,
    }


def measure_latency(engine: sa.Engine, dsn: str, args: argparse.Namespace) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="outbox-latency-"))
    os.environ["BENCH_LATENCY_DIR"] = str(folder)  # the relay inherits it
    committed: dict[Any, float] = {}
    with (
        relay(dsn, "bench.latency:registry", args) as running,
        engine.connect() as producer,
    ):
        process, sampler = running.process, running.sampler
        deadline = time.perf_counter() + args.timeout
        # The relay is up and idle once it has run a first job (not counted).
        outbox.enqueue(producer, latency.TYPE, {"warmup": True})
        producer.commit()
        wait_until(engine, "SELECT EXISTS (SELECT FROM outbox_jobs)", deadline, 0.05)
        time.sleep(1.0)
        count = int(args.rate * args.seconds)
        started = time.perf_counter()
        for n in range(count):
            pause = started + n / args.rate - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            handle = outbox.enqueue(producer, latency.TYPE, {"n": n})
            producer.commit()
            committed[handle.uuid] = time.time()
        elapsed = time.perf_counter() - started
        wait_until(engine, "SELECT EXISTS (SELECT FROM outbox_jobs)", deadline, 0.05)
        if process.poll() is not None:
            raise RuntimeError(f"the relay exited with code {process.returncode}")
    seen = latency.read(folder)
    shutil.rmtree(folder, ignore_errors=True)
    missing = [uuid for uuid in committed if uuid not in seen]
    if missing:
        raise RuntimeError(f"{len(missing)} of {len(committed)} jobs were never handled")
    ms = sorted((seen[uuid] - at) * 1000 for uuid, at in committed.items())
    return {
        "config": {
            **relay_config(dsn, args),
            "rate": f"{args.rate:g}/s",
            "seconds": f"{args.seconds:g}",
        },
        "jobs": count,
        "seconds": elapsed,
        "p50_ms": percentile(ms, 50),
        "p95_ms": percentile(ms, 95),
        "p99_ms": percentile(ms, 99),
        "peak_rss_mib": sampler.peak / MIB,
    }


def percentile(ordered: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


def run(args: argparse.Namespace) -> dict[str, Any]:
    with temporary_database(server_dsn(), prefix="outbox_bench") as dsn:
        engine = create_engine(dsn, pool_size=args.clients + 2)
        try:
            if args.workload == "enqueue_single":
                result = enqueue_single(engine, args)
            elif args.workload == "enqueue_bulk":
                result = enqueue_bulk(engine, args)
            elif args.workload == "drain":
                result = drain(engine, dsn, args)
            else:
                result = measure_latency(engine, dsn, args)
        finally:
            engine.dispose()
    jobs = result.pop("jobs", args.jobs)
    seconds = result.pop("seconds")
    return {
        "system": "outbox",
        "version": distribution.version(),
        "workload": args.workload,
        "config": result.pop("config"),
        "jobs": jobs,
        "seconds": round(seconds, 3),
        "jobs_per_s": round(jobs / seconds, 1),
        **{
            key: round(value, 2) if isinstance(value, float) else value
            for key, value in result.items()
        },
    }


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=WORKLOADS, required=True)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument(
        "--concurrency", type=int, help="OUTBOX_CONCURRENCY (default: the relay's own, 16)"
    )
    parser.add_argument(
        "--batch-size", type=int, help="OUTBOX_CLAIM_BATCH (default: the relay's own, 500)"
    )
    parser.add_argument(
        "--analyze", action="store_true", help="drain: ANALYZE after the fill (not timed)"
    )
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--seal", choices=["on", "off"], default="on")
    parser.add_argument("--timeout", type=float, default=900, help="seconds a drain may take")
    args = parser.parse_args(argv)
    # A SIGTERM (a timeout in python -m bench) still stops the relay and drops the database.
    signal.signal(signal.SIGTERM, _terminate)
    try:
        result = run(args)
    except Timeout as exc:
        print(f"bench.ours: timed out: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
