"""Processes and signals.

One process: the first SIGTERM or SIGINT stops claiming and lets in-flight jobs
finish (or releases those not started) within the grace period, then exits 0; a
second exits at once. Nothing is lost either way: a job left running keeps its
lease and is rescued when it expires.

Several processes: a supervisor starts them, restarts any that dies, and passes
signals on.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType

import structlog
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from outbox.database import create_engine

from . import forked
from .dispatch import HANDLER_THREAD_PREFIX
from .forked import Child
from .gauges import QueueGauges
from .http import HttpServer, Readiness, format_addr
from .worker import Worker, settle_garbage_collector

log = structlog.get_logger("outbox.relay")
RESTART_BACKOFF_MAX = 10.0
HEALTHY_AFTER = 30.0  # seconds up after which a process's crash count starts again
#: Set in the children's environment: the pid a child watches, to stop when it is gone.
SUPERVISOR_ENV = "OUTBOX_SUPERVISOR_PID"
#: The children's DSN travels in their environment: a command line is there for every
#: local user to read (``ps``), and a DSN may hold a password.
DSN_ENV = "OUTBOX_DSN"


def run_worker(worker: Worker) -> int:
    supervisor = os.environ.get(SUPERVISOR_ENV)
    if supervisor:
        watch_parent(worker, int(supervisor))
    # The handler only writes the signal's number to a pipe; a thread reads it, logs and
    # stops the worker. A handler runs in the main thread between two of its steps: had it
    # logged (or set an Event) while that thread held the same lock, it would wait forever.
    readable, writable = os.pipe()
    os.set_blocking(writable, False)
    threading.Thread(
        target=_answer_signals, args=(readable, worker, bool(supervisor)),
        name="outbox-signals", daemon=True,
    ).start()  # fmt: skip

    def on_signal(signum: int, frame: FrameType | None) -> None:
        with contextlib.suppress(BlockingIOError):  # full: hundreds of signals unread already
            os.write(writable, bytes([signum]))

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        worker.run()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        os.close(writable)  # the signal thread reads the end of the pipe, and ends
    if busy := _handler_threads(HANDLER_THREADS_LINGER):
        # Python waits for every handler thread at exit, and a hung handler never returns:
        # leave without it. Its job keeps its lease and is rescued when that expires (G2).
        log.warning("exiting with handlers still running past the grace period", threads=busy)
        _exit(0)
    return 0


def _answer_signals(readable: int, worker: Worker, supervised: bool) -> None:
    """The first SIGTERM or SIGINT stops the worker; a second exits at once, unless a
    supervisor passed the signal on (then it is the same request again)."""
    signals = 0
    with os.fdopen(readable, "rb", buffering=0) as pipe:
        while received := pipe.read(64):
            for signum in received:
                signals += 1
                name = signal.Signals(signum).name
                if signals == 1:
                    log.info("stopping: finishing in-flight jobs", signal=name)
                    worker.stop()
                elif supervised:
                    # Ctrl-C in a terminal, or systemd's stop, signals every process of the
                    # group at once, and the supervisor passes its own signal on: one request,
                    # not two. The supervisor ends its processes with SIGKILL when it means "now".
                    log.info("already stopping", signal=name)
                else:
                    log.warning(
                        "second signal: exiting now; running jobs are rescued when leases expire"
                    )
                    _exit(1)


#: Seconds the idle handler threads get to end after the relay stopped.
HANDLER_THREADS_LINGER = 2.0


def _handler_threads(linger: float) -> int:
    """Handler threads still alive after up to ``linger`` seconds."""
    deadline = time.monotonic() + linger
    threads = [t for t in threading.enumerate() if t.name.startswith(HANDLER_THREAD_PREFIX)]
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return sum(1 for thread in threads if thread.is_alive())


def _exit(code: int) -> None:
    """Exit now, without waiting for threads; what was logged is written first."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


def watch_parent(worker: Worker, supervisor: int) -> None:
    """Stop the worker if its supervisor dies (SIGKILL, OOM): an orphan must not go on
    claiming jobs that nobody supervises."""

    def watch() -> None:
        while not worker.wait_stopped(1.0):
            if os.getppid() != supervisor:
                log.warning("supervisor is gone: stopping", supervisor=supervisor)
                worker.stop()
                return

    threading.Thread(target=watch, name="outbox-parent-watch", daemon=True).start()


#: Exit statuses of a child that stopped cleanly on the first signal: 0 once its handlers
#: were set; killed by that SIGTERM (or a terminal's SIGINT) while it was still starting,
#: before it set them, and so before its first claim. A second signal's SIGKILL is no clean stop.
CLEAN_STOPS = frozenset({0, -signal.SIGTERM, -signal.SIGINT})


def run_processes(
    child_argv: Sequence[str],
    processes: int,
    grace: float,
    dsn: str,
    metrics_addr: tuple[str, int] | None,
    run_child: Callable[[], int] | None = None,
) -> int:
    """Run ``processes`` copies of ``child_argv``; restart crashed ones until signalled.

    ``child_argv`` must not hold the DSN: each child is given ``dsn`` in its environment.
    With ``run_child`` (the same relay, as a function), the first processes are forked from
    this one when it runs a single thread (relay/forked.py); restarts run ``child_argv``.

    The children write their metrics to files of prometheus-client's multiprocess mode;
    the supervisor serves their sums, and the queue gauges, on one endpoint.
    """
    # Frozen before the first forks (their start-up heap stays shared, untouched by their
    # collections), and collection on again here: the command paused it (outbox.collector).
    settle_garbage_collector()
    with tempfile.TemporaryDirectory(prefix="outbox-metrics-") as metrics_dir:
        servers: list[HttpServer] = []

        def serve() -> None:
            # After the first processes started: its thread would keep them from being forked.
            if (server := _serve_metrics(metrics_dir, dsn, metrics_addr)) is not None:
                servers.append(server)

        try:
            return _supervise(child_argv, processes, grace, dsn, metrics_dir, run_child, serve)
        finally:
            for server in servers:
                server.stop()


def _serve_metrics(metrics_dir: str, dsn: str, addr: tuple[str, int] | None) -> HttpServer | None:
    if addr is None:
        return None
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=metrics_dir)  # type: ignore[no-untyped-call]
    engine = create_engine(dsn, pool_size=2, pool_pre_ping=True)
    registry.register(QueueGauges(engine))
    server = HttpServer(addr, registry, Readiness(engine), lambda: True)
    threading.Thread(target=server.run, name="outbox-http", daemon=True).start()
    log.info("metrics served", address=format_addr(server.address))
    return server


def _supervise(
    child_argv: Sequence[str],
    processes: int,
    grace: float,
    dsn: str,
    metrics_dir: str,
    run_child: Callable[[], int] | None,
    started: Callable[[], None],
) -> int:
    children: dict[int, Child] = {}
    failures = [0] * processes
    stopping = False
    signals = 0

    started_at = [0.0] * processes

    def spawn(slot: int) -> None:
        env = {
            SUPERVISOR_ENV: str(os.getpid()),
            DSN_ENV: dsn,
            "PROMETHEUS_MULTIPROC_DIR": metrics_dir,
        }
        how = "forked"
        if run_child is not None and forked.can_fork():
            children[slot] = forked.fork(run_child, env)
        else:
            how = "executed"
            children[slot] = subprocess.Popen([sys.executable, *child_argv], env=os.environ | env)
        started_at[slot] = time.monotonic()
        log.info("relay process started", slot=slot, pid=children[slot].pid, how=how)

    signalled: set[int] = set()  # slots whose process was alive when the first signal came

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping, signals
        signals += 1
        stopping = True
        for slot, child in children.items():
            if child.poll() is None:
                if signals == 1:
                    signalled.add(slot)
                child.send_signal(signal.SIGKILL if signals > 1 else signal.SIGTERM)

    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, on_signal)
    for slot in range(processes):
        spawn(slot)
    started()
    restart_at: dict[int, float] = {}
    while True:
        time.sleep(0.2)
        if stopping:
            deadline = time.monotonic() + grace + 5
            while any(c.poll() is None for c in children.values()):
                if time.monotonic() > deadline:
                    for child in children.values():
                        if child.poll() is None:
                            child.kill()
                time.sleep(0.1)
            # A process that died before the signal was already reported and awaited its
            # restart: the exit status speaks of the processes the signal stopped.
            codes = [children[slot].returncode for slot in sorted(signalled)]
            log.info("relay processes stopped", exit_codes=codes)
            return 0 if all(code in CLEAN_STOPS for code in codes) else 1
        now = time.monotonic()
        for slot, child in list(children.items()):
            if child.poll() is None:
                if now - started_at[slot] > HEALTHY_AFTER:
                    failures[slot] = 0  # it stayed up: the next crash restarts it quickly
                continue
            if slot not in restart_at:
                mark_process_dead(child.pid, metrics_dir)  # type: ignore[no-untyped-call]
                failures[slot] += 1
                delay = min(RESTART_BACKOFF_MAX, 0.5 * 2 ** (failures[slot] - 1))
                restart_at[slot] = now + delay
                log.warning(
                    "relay process died; restarting",
                    slot=slot, code=child.returncode, in_s=delay,
                )  # fmt: skip
            elif now >= restart_at[slot]:
                del restart_at[slot]
                spawn(slot)
