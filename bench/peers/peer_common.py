"""What the peer drivers share: the command line, worker processes, waits, sampling, output.

Standard library plus psutil and psycopg only: it runs in ``.bench-venv`` next to
``procrastinate_driver.py`` and ``pgqueuer_driver.py``, and inside their worker
processes, and never imports ``outbox``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
WORKLOADS = ("enqueue_single", "enqueue_bulk", "drain", "latency")

# Passed to worker processes through their environment, never on their command line.
ENV_DSN = "BENCH_PEER_DSN"
ENV_DONE_DIR = "BENCH_PEER_DONE_DIR"
ENV_POOL = "BENCH_PEER_POOL"
WORKER_APP_NAME = "bench-peer-worker"


class Timeout(SystemExit):
    """A wait ran past its deadline: the driver exits 1 with the message on stderr."""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parse_args(system: str, argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=f"{system}_driver.py",
        description=f"Drive {system} through one benchmark workload; one JSON line on stdout.",
    )
    parser.add_argument("--dsn", required=True, help="an empty database made for this run")
    parser.add_argument("--workload", required=True, choices=WORKLOADS)
    parser.add_argument("--jobs", type=int, default=10_000, help="jobs (not for latency)")
    parser.add_argument("--clients", type=int, default=4, help="enqueue_single: clients")
    parser.add_argument(
        "--processes", type=int, default=None, help="worker processes (drain: 2, latency: 1)"
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="procrastinate: jobs at once per worker (10); "
        "pgqueuer: --max-concurrent-tasks (unlimited)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help="pgqueuer: jobs fetched per dequeue (50)"
    )
    parser.add_argument(
        "--analyze",
        action="store_true",
        help="drain: ANALYZE the database after the fill, before the workers start "
        "(default: a fresh burst, no ANALYZE)",
    )
    parser.add_argument("--rate", type=float, default=200.0, help="latency: jobs/s")
    parser.add_argument("--seconds", type=float, default=20.0, help="latency: seconds")
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="deadline in seconds for every wait"
    )
    parser.add_argument(
        "--stop-timeout",
        type=float,
        default=10.0,
        help="seconds between SIGTERM and SIGKILL for workers",
    )
    args = parser.parse_args(argv)
    if args.processes is None:
        args.processes = 1 if args.workload == "latency" else 2
    for name in ("jobs", "clients", "processes"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.rate <= 0 or args.seconds <= 0:
        parser.error("--rate and --seconds must be positive")
    return args


def version(dist: str) -> str:
    from importlib.metadata import version as _version

    return _version(dist)


def emit(result: dict[str, Any]) -> None:
    """The one JSON line on stdout; keys whose value is None are left out."""
    line = json.dumps({k: v for k, v in result.items() if v is not None})
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def install_signal_exit() -> None:
    """SIGTERM/SIGHUP end the driver through ``finally`` blocks, so its workers die too."""

    def handler(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGHUP, handler)


# --- worker processes ------------------------------------------------------------------


class Workers:
    """P worker processes, each in its own process group, always stopped on exit."""

    def __init__(self, stop_timeout: float) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.stop_timeout = stop_timeout

    def start(self, argv: list[str], env: dict[str, str], count: int) -> None:
        full_env = {**os.environ, **env, "PYTHONPATH": _pythonpath()}
        for _ in range(count):
            self.procs.append(
                subprocess.Popen(
                    argv,
                    cwd=HERE,
                    env=full_env,
                    stdin=subprocess.DEVNULL,
                    stdout=sys.stderr.fileno(),
                    start_new_session=True,
                )
            )
        log(
            f"started {count} worker(s): {' '.join(argv[1:])} "
            f"(pids {', '.join(str(p.pid) for p in self.procs)})"
        )

    def check_alive(self) -> None:
        for proc in self.procs:
            if proc.poll() is not None:
                raise SystemExit(f"worker {proc.pid} exited early with code {proc.returncode}")

    def stop(self) -> None:
        """SIGTERM every group, SIGKILL what is left after ``stop_timeout``."""
        live = [p for p in self.procs if p.poll() is None]
        for proc in live:
            _killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        for proc in live:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log(f"worker {proc.pid} ignored SIGTERM for {self.stop_timeout:g} s: SIGKILL")
        for proc in self.procs:
            _killpg(proc.pid, signal.SIGKILL)  # also any child left in the group
            if proc.poll() is None:
                proc.wait()

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _pythonpath() -> str:
    current = os.environ.get("PYTHONPATH")
    return f"{HERE}{os.pathsep}{current}" if current else str(HERE)


class RssSampler:
    """Peak resident set, in MiB, summed over the workers and all their children."""

    def __init__(self, pids: Callable[[], list[int]], interval: float = 0.1) -> None:
        self.pids = pids
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        import psutil

        handles: dict[int, psutil.Process] = {}
        while True:
            total = 0
            for pid in self.pids():
                try:
                    root = handles.get(pid) or handles.setdefault(pid, psutil.Process(pid))
                    tree = [root, *root.children(recursive=True)]
                except psutil.Error:
                    continue
                for proc in tree:
                    with contextlib.suppress(psutil.Error):
                        total += proc.memory_info().rss
            self.peak = max(self.peak, total)
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mib(self) -> float:
        return round(self.peak / 2**20, 1)


# --- waiting on the database -----------------------------------------------------------


def wait_until(
    what: str,
    predicate: Callable[[], bool],
    timeout: float,
    interval: float = 0.05,
    check: Callable[[], None] | None = None,
) -> None:
    """Poll ``predicate`` until true; exit non-zero once ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if check is not None:
            check()
        if time.monotonic() >= deadline:
            raise Timeout(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


class Probe:
    """One autocommit psycopg connection for the driver's own queries."""

    def __init__(self, dsn: str) -> None:
        import psycopg

        self.conn = psycopg.connect(dsn, autocommit=True, application_name="bench-peer-probe")

    def scalar(self, sql: str) -> Any:
        row = self.conn.execute(sql).fetchone()
        return None if row is None else row[0]

    def workers_connected(self, sql_like: str | None = None) -> int:
        """Backends of the workers (by application name), optionally running ``sql_like``."""
        sql = (
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            f"AND application_name = '{WORKER_APP_NAME}'"
        )
        if sql_like:
            sql += f" AND query ILIKE '{sql_like}'"
        return int(self.scalar(sql))

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Probe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- latency ---------------------------------------------------------------------------

_done_file: Any = None


def record_done(seq: int) -> None:
    """Called by the no-op task in a worker: note when job ``seq`` ran (wall clock)."""
    global _done_file
    now = time.time()
    if _done_file is None:
        folder = os.environ.get(ENV_DONE_DIR)
        if not folder:
            return
        _done_file = open(Path(folder) / f"done-{os.getpid()}.txt", "a", buffering=1)  # noqa: SIM115
    _done_file.write(f"{seq} {now!r}\n")
    _done_file.flush()


def read_done(folder: Path) -> dict[int, float]:
    """First run time of each job, over every worker's file."""
    done: dict[int, float] = {}
    for path in sorted(folder.glob("done-*.txt")):
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) != 2:
                continue  # a line cut short by a killed worker
            seq, at = int(parts[0]), float(parts[1])
            done[seq] = min(at, done.get(seq, math.inf))
    return done


def latencies_ms(committed: dict[int, float], done: dict[int, float]) -> list[float]:
    missing = sorted(set(committed) - set(done))
    if missing:
        raise SystemExit(f"{len(missing)} job(s) never ran, first seq {missing[0]}")
    return sorted((done[seq] - at) * 1000.0 for seq, at in committed.items())


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        raise ValueError("no values")
    rank = max(1, math.ceil(p / 100.0 * len(sorted_values)))
    return sorted_values[rank - 1]


def latency_summary(values: list[float]) -> dict[str, float]:
    return {f"p{p}_ms": round(percentile(values, p), 2) for p in (50, 95, 99)}


# --- the timed workloads with workers ------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Peer:
    """What a driver tells the shared drain and latency runs about its system."""

    name: str
    #: The worker processes' command line, and their environment given the folder where
    #: they note run times (None when nothing is noted).
    argv: list[str]
    env: Callable[[Path | None], dict[str, str]]
    #: How the workers are configured, as the result's "config" says it.
    config: str
    #: SQL that is true while any job is queued or running, and what it waits for, in words.
    live: str
    live_what: str
    #: The workers are connected and idle, and what that is, in words.
    ready: Callable[[Probe], bool]
    ready_what: str


def rate(config: str, jobs: int, seconds: float) -> dict[str, object]:
    return {
        "config": config,
        "jobs": jobs,
        "seconds": round(seconds, 3),
        "jobs_per_s": round(jobs / seconds, 1),
    }


#: Tables analysed so far, by ANALYZE or autovacuum (the same query as ``bench.ours``).
ANALYSES = "SELECT coalesce(sum(analyze_count + autoanalyze_count), 0) FROM pg_stat_user_tables"
#: How often the end of a drain is looked for (``bench.ours`` polls outbox's as often).
DRAIN_POLL = 0.02


def drain(
    args: argparse.Namespace, peer: Peer, finished: Callable[[Probe], None] | None = None
) -> dict[str, object]:
    """Start the workers on jobs enqueued already; time them until no job is live.

    With ``--analyze`` the whole (fresh) database is analysed first, not timed: the
    statement ``bench.relay.fill`` runs for outbox. ``finished`` may check the jobs' end
    states before the workers stop."""
    with Probe(args.dsn) as probe, Workers(args.stop_timeout) as workers:
        if args.analyze:
            probe.conn.execute("ANALYZE")
            log("analysed the database (not timed)")
        analyses = int(probe.scalar(ANALYSES))
        started = time.perf_counter()
        workers.start(peer.argv, peer.env(None), args.processes)
        with RssSampler(lambda: [p.pid for p in workers.procs]) as rss:
            wait_until(
                peer.live_what,
                lambda: not probe.scalar(peer.live),
                args.timeout,
                interval=DRAIN_POLL,
                check=workers.check_alive,
            )
            elapsed = time.perf_counter() - started
        if finished is not None:
            finished(probe)
        analyses = int(probe.scalar(ANALYSES)) - analyses
    return {
        **rate(peer.config, args.jobs, elapsed),
        "preparation": "after ANALYZE" if args.analyze else "fresh burst, no ANALYZE",
        "peak_rss_mib": rss.peak_mib,
        "analyses_during": analyses,
    }


async def latency(
    args: argparse.Namespace, peer: Peer, enqueue: Callable[[int], Awaitable[object]]
) -> dict[str, object]:
    """Idle workers first; then ``enqueue(seq)`` at ``args.rate`` jobs/s for ``args.seconds``;
    each job's latency is from its commit to its task's start (noted by the workers)."""
    total = max(1, round(args.rate * args.seconds))
    done_dir = Path(tempfile.mkdtemp(prefix=f"bench-peer-{peer.name}-"))
    try:
        with Probe(args.dsn) as probe, Workers(args.stop_timeout) as workers:
            workers.start(peer.argv, peer.env(done_dir), args.processes)
            wait_until(
                peer.ready_what, lambda: peer.ready(probe), args.timeout, check=workers.check_alive
            )
            await asyncio.sleep(1.0)  # let every worker reach its idle wait
            with RssSampler(lambda: [p.pid for p in workers.procs]) as rss:
                committed: dict[int, float] = {}
                started = time.perf_counter()
                for seq in range(total):
                    delay = started + seq / args.rate - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    await enqueue(seq)
                    committed[seq] = time.time()
                produced = time.perf_counter() - started
                log(f"enqueued {total} jobs in {produced:.2f} s")
                wait_until(
                    peer.live_what,
                    lambda: not probe.scalar(peer.live),
                    args.timeout,
                    check=workers.check_alive,
                )
                wait_until(
                    "every job's run time to be written",
                    lambda: len(read_done(done_dir)) >= total,
                    args.timeout,
                )
        values = latencies_ms(committed, read_done(done_dir))
    finally:
        shutil.rmtree(done_dir, ignore_errors=True)
    return {
        **rate(f"{peer.config}, {args.rate:g} jobs/s for {args.seconds:g} s", total, produced),
        **latency_summary(values),
        "peak_rss_mib": rss.peak_mib,
    }
