"""pgqueuer under the peer workloads; run with the ``.bench-venv`` python.

    .bench-venv/bin/python bench/peers/pgqueuer_driver.py --dsn postgresql://... \\
        --workload {enqueue_single,enqueue_bulk,drain,latency} --jobs N [--clients 4] \\
        [--processes P] [--batch-size B] [--concurrency C] [--analyze] [--rate 200] \\
        [--seconds 20]

Installs pgqueuer's schema (``Queries.install()``, as ``pgq install`` does, default
durability) into the (empty) database, then:

- enqueue_single: ``--clients`` asyncio clients, each on its own asyncpg connection, each
  ``Queries.enqueue`` of one job per call (one statement, autocommit) until N in all.
- enqueue_bulk: one ``Queries.enqueue`` call with lists of N entrypoints/payloads/priorities.
- drain: N jobs enqueued in bulk, then with ``--analyze`` an ANALYZE of the database
  (neither timed), then P worker processes, each running
  ``pgqueuer.run`` (the supervisor behind ``pgq run``; see ``worker_main``) with a
  ``QueueManager`` on one asyncpg connection with ``--batch-size B`` (and
  ``--max-concurrent-tasks C`` when ``--concurrency`` is given); timed from their start
  until the ``pgqueuer`` table has no ``queued`` or ``picked`` row (polled every 0.02 s).
- latency: P idle workers, then one producer enqueues at ``--rate`` for ``--seconds``; each
  job's latency is when the no-op entrypoint ran minus when ``enqueue`` returned.

Logs go to stderr; stdout gets one JSON line. ``pgqueuer_driver.py worker`` is a worker
process; ``worker_factory`` its QueueManager, configured from its environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import peer_common as common
from pgqueuer.db import AsyncpgDriver
from pgqueuer.models import Job
from pgqueuer.qm import QueueManager
from pgqueuer.queries import Queries

SYSTEM = "pgqueuer"
ENTRYPOINT = "bench_noop"
DEFAULT_BATCH = 50
LIVE = "SELECT EXISTS (SELECT 1 FROM pgqueuer WHERE status IN ('queued', 'picked'))"


@contextlib.asynccontextmanager
async def worker_factory() -> AsyncIterator[QueueManager]:
    """The factory each worker runs (``pgq run pgqueuer_driver:worker_factory`` would too)."""
    conn = await asyncpg.connect(
        os.environ[common.ENV_DSN],
        server_settings={"application_name": common.WORKER_APP_NAME},
    )
    try:
        qm = QueueManager(Queries(AsyncpgDriver(conn)))

        @qm.entrypoint(ENTRYPOINT)
        async def bench_noop(job: Job) -> None:
            if job.payload and job.payload.startswith(b'{"seq"'):
                common.record_done(json.loads(job.payload)["seq"])

        yield qm
    finally:
        await conn.close()


async def connect(dsn: str) -> tuple[asyncpg.Connection, Queries]:
    conn = await asyncpg.connect(dsn)
    return conn, Queries(AsyncpgDriver(conn))


async def install(queries: Queries, dsn: str) -> None:
    if await queries.schema_is_installed():
        with common.Probe(dsn) as probe:
            if probe.scalar("SELECT EXISTS (SELECT 1 FROM pgqueuer)"):
                raise SystemExit(
                    "the pgqueuer table is not empty: give the driver an empty database"
                )
        common.log("pgqueuer schema already there")
        return
    await queries.install()
    common.log("installed pgqueuer's schema")


def payload(n: int) -> bytes:
    return b'{"n": %d}' % n


async def enqueue_single(args) -> tuple[float, str]:
    clients = [await connect(args.dsn) for _ in range(args.clients)]
    counter = iter(range(args.jobs))

    async def client(queries: Queries) -> None:
        for n in counter:
            await queries.enqueue(ENTRYPOINT, payload(n))

    try:
        started = time.perf_counter()
        await asyncio.gather(*(client(q) for _, q in clients))
        elapsed = time.perf_counter() - started
    finally:
        for conn, _ in clients:
            await conn.close()
    return elapsed, f"{args.clients} clients x enqueue, one job per call"


async def enqueue_bulk(args, queries: Queries) -> tuple[float, str]:
    entrypoints = [ENTRYPOINT] * args.jobs
    payloads = [payload(n) for n in range(args.jobs)]
    priorities = [0] * args.jobs
    started = time.perf_counter()
    ids = await queries.enqueue(entrypoints, payloads, priorities)
    elapsed = time.perf_counter() - started
    if len(ids) != args.jobs:
        raise SystemExit(f"enqueue returned {len(ids)} ids for {args.jobs} jobs")
    return elapsed, f"one enqueue call of {args.jobs} jobs (lists)"


def worker_argv(args) -> list[str]:
    argv = [
        sys.executable,
        str(Path(__file__).resolve()),
        "worker",
        "--batch-size",
        str(args.batch_size),
    ]
    if args.concurrency:
        argv += ["--max-concurrent-tasks", str(args.concurrency)]
    return argv


def worker_main(argv: list[str]) -> int:
    """A worker process: ``pgqueuer.run``, which is what ``pgq run`` calls.

    ``pgq run`` itself (1.6.0) dies at start with this typer (0.29): its ``--log-level``
    option reaches ``setup_fancy_logger`` as a str, whose ``.name`` it reads. So the worker
    goes through the same supervisor, on uvloop where installed as the CLI does.
    """
    import argparse
    from datetime import timedelta

    import pgqueuer

    parser = argparse.ArgumentParser(prog="pgqueuer_driver.py worker")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH)
    parser.add_argument("--max-concurrent-tasks", type=int, default=None)
    args = parser.parse_args(argv)
    coro = pgqueuer.run(
        worker_factory,
        batch_size=args.batch_size,
        max_concurrent_tasks=args.max_concurrent_tasks,
        dequeue_timeout=timedelta(seconds=30),
    )
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
    else:
        uvloop.run(coro)
    return 0


def worker_env(dsn: str, done_dir: Path | None = None) -> dict[str, str]:
    env = {common.ENV_DSN: dsn}
    if done_dir is not None:
        env[common.ENV_DONE_DIR] = str(done_dir)
    return env


def workers_config(args) -> str:
    text = f"{args.processes} process{'es' if args.processes > 1 else ''} x batch {args.batch_size}"
    if args.concurrency:
        text += f", max {args.concurrency} tasks"
    return text + " (asyncpg)"


def peer(args) -> common.Peer:
    return common.Peer(
        name=SYSTEM,
        argv=worker_argv(args),
        env=lambda done_dir: worker_env(args.dsn, done_dir),
        config=workers_config(args),
        live=LIVE,
        live_what="the pgqueuer table to have no queued/picked job",
        ready=lambda probe: probe.workers_connected() >= args.processes,
        ready_what=f"{args.processes} worker(s) to connect",
    )


def all_succeeded(probe: common.Probe, jobs: int) -> None:
    """Every job ran and was logged successful (a failed one would stay in the table, held,
    and the drain's live query would not see it)."""
    left = probe.scalar("SELECT count(*) FROM pgqueuer")
    done = probe.scalar("SELECT count(*) FROM pgqueuer_log WHERE status = 'successful'")
    if left or done != jobs:
        raise SystemExit(f"{done} of {jobs} jobs logged successful, {left} left in the table")


async def drain(args, queries: Queries) -> dict[str, object]:
    await queries.enqueue(
        [ENTRYPOINT] * args.jobs, [payload(n) for n in range(args.jobs)], [0] * args.jobs
    )
    common.log(f"enqueued {args.jobs} jobs (not timed)")
    return common.drain(args, peer(args), finished=lambda probe: all_succeeded(probe, args.jobs))


async def run(args) -> dict[str, object]:
    conn, queries = await connect(args.dsn)
    try:
        await install(queries, args.dsn)
        if args.workload == "enqueue_single":
            elapsed, config = await enqueue_single(args)
        elif args.workload == "enqueue_bulk":
            elapsed, config = await enqueue_bulk(args, queries)
        elif args.workload == "drain":
            return await drain(args, queries)
        else:
            return await common.latency(
                args, peer(args), lambda seq: queries.enqueue(ENTRYPOINT, b'{"seq": %d}' % seq)
            )
        return common.rate(config, args.jobs, elapsed)
    finally:
        await conn.close()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["worker"]:
        return worker_main(argv[1:])
    args = common.parse_args(SYSTEM, argv)
    if args.batch_size is None:
        args.batch_size = DEFAULT_BATCH
    if args.concurrency and args.concurrency < 2 * args.batch_size:
        raise SystemExit("pgqueuer needs --concurrency (max_concurrent_tasks) >= 2 x --batch-size")
    common.install_signal_exit()
    result = asyncio.run(run(args))
    common.emit(
        {
            "system": SYSTEM,
            "version": common.version("pgqueuer"),
            "workload": args.workload,
            **result,
        }
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
