"""outbox under the workloads the peer drivers run, one JSON line at the end.

    python -m bench.ours --workload {enqueue_single,enqueue_bulk,drain,latency} --jobs N
                         [--clients 4] [--processes 1] [--concurrency 16] [--batch-size B]
                         [--rate 200] [--seconds 20] [--seal on|off] [--timeout 900]

- enqueue_single: N jobs, ``--clients`` threads, each ``outbox.enqueue`` + commit per job.
- enqueue_bulk: ``outbox.enqueue_many`` of N jobs in one transaction (timed with its commit).
- drain: N ``bench.noop`` jobs enqueued first (not timed), then ``outbox relay`` started;
  timed from its start until the queue is empty and, with sealing on (the default),
  every history row is sealed. Peak RSS is the relay's supervisor plus its children,
  sampled every 0.1 s. ``--batch-size`` sets OUTBOX_CLAIM_BATCH.
- latency: the relay started and idle first; then ``--rate`` jobs/s for ``--seconds``
  seconds, each enqueued and committed on its own; latency is from the moment the
  commit returned to the moment the handler started (see ``bench/latency.py``).

Runs in a database of its own on OUTBOX_DSN, else 127.0.0.1:5432, else the embedded
server, dropped at the end. The relay gets the DSN in its environment.
"""

from __future__ import annotations

import argparse
import contextlib
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
import sqlalchemy as sa
from sqlalchemy.orm import Session

import outbox
from bench import latency
from bench.relay import UNSEALED, fill
from outbox import distribution
from outbox.database import create_engine
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


@contextlib.contextmanager
def relay(
    dsn: str, app: str, args: argparse.Namespace
) -> Iterator[tuple[subprocess.Popen[bytes], RssSampler]]:
    """``outbox relay`` running against ``dsn``, with an RSS sampler on it."""
    env = {
        **os.environ,
        "OUTBOX_DSN": dsn,
        "OUTBOX_SEAL_INTERVAL": "1s" if args.seal == "on" else "0",
    }
    if args.batch_size:
        env["OUTBOX_CLAIM_BATCH"] = str(args.batch_size)
    process = subprocess.Popen(
        [sys.executable, "-m", "outbox", "relay", "--app", app,
         "--processes", str(args.processes), "--concurrency", str(args.concurrency),
         "--metrics-addr", "off", "--log-level", "warning"],
        cwd=ROOT, env=env,
    )  # fmt: skip
    sampler = RssSampler(process.pid)
    sampler.start()
    try:
        yield process, sampler
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

    threads = [threading.Thread(target=client, args=(count,)) for count in per_client]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
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


def relay_config(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "processes": args.processes,
        "concurrency": args.concurrency,
        "claim_batch": args.batch_size or 100,
        "seal": args.seal,
    }


def drain(engine: sa.Engine, dsn: str, args: argparse.Namespace) -> dict[str, Any]:
    fill(engine, args.jobs)
    with relay(dsn, "bench.noop:registry", args) as (process, sampler):
        started = time.perf_counter()
        deadline = started + args.timeout
        wait_until(engine, "SELECT EXISTS (SELECT FROM outbox_jobs)", deadline, 0.02)
        if args.seal == "on":
            wait_until(engine, UNSEALED, deadline, 0.05)
        elapsed = time.perf_counter() - started
        if process.poll() is not None:
            raise RuntimeError(f"the relay exited with code {process.returncode}")
    return {"config": relay_config(args), "seconds": elapsed, "peak_rss_mib": sampler.peak / MIB}


def measure_latency(engine: sa.Engine, dsn: str, args: argparse.Namespace) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="outbox-latency-"))
    os.environ["BENCH_LATENCY_DIR"] = str(folder)  # the relay inherits it
    committed: dict[Any, float] = {}
    with (
        relay(dsn, "bench.latency:registry", args) as (process, sampler),
        engine.connect() as producer,
    ):
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
            **relay_config(args),
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
        **{key: round(value, 2) for key, value in result.items()},
    }


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=WORKLOADS, required=True)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--batch-size", type=int, help="OUTBOX_CLAIM_BATCH (default 100)")
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
