"""procrastinate under the peer workloads; run with the ``.bench-venv`` python.

    .bench-venv/bin/python bench/peers/procrastinate_driver.py --dsn postgresql://... \\
        --workload {enqueue_single,enqueue_bulk,drain,latency} --jobs N [--clients 4] \\
        [--processes P] [--concurrency C] [--analyze] [--rate 200] [--seconds 20] \\
        [--timeout 600]

Applies procrastinate's schema to the (empty) database, then:

- enqueue_single: ``--clients`` asyncio clients sharing one app (a pool of that many
  connections), each ``defer_async`` one job per call (one transaction) until N in all.
- enqueue_bulk: one ``batch_defer_async`` call with N jobs (one INSERT of N rows).
- drain: N jobs deferred in bulk, then with ``--analyze`` an ANALYZE of the database
  (neither timed), then P ``procrastinate worker --concurrency C`` processes, each with a
  pool of C connections (plus its LISTEN connection); timed from their start until no row
  of ``procrastinate_jobs`` is ``todo`` or ``doing`` (polled every 0.02 s).
- latency: P idle workers, then one producer defers at ``--rate`` for ``--seconds``; each
  job's latency is when the no-op task ran minus when ``defer_async`` returned.

Logs go to stderr; stdout gets one JSON line. This module is also the app the workers load
(``--app procrastinate_driver.app``), configured from their environment.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import peer_common as common
import procrastinate

SYSTEM = "procrastinate"
TASK = "bench_noop"
DEFAULT_CONCURRENCY = 10
LIVE = "SELECT EXISTS (SELECT 1 FROM procrastinate_jobs WHERE status IN ('todo', 'doing'))"


def make_app(dsn: str, pool_size: int, application_name: str | None = None) -> procrastinate.App:
    connector = procrastinate.PsycopgConnector(
        conninfo=dsn,
        min_size=pool_size,
        max_size=pool_size,
        kwargs={"application_name": application_name} if application_name else None,
    )
    new_app = procrastinate.App(connector=connector)

    @new_app.task(name=TASK)
    async def bench_noop(n: int = 0, seq: int | None = None) -> None:
        if seq is not None:
            common.record_done(seq)

    return new_app


if __name__ != "__main__":  # procrastinate warns about apps made in ``__main__``
    # The app ``procrastinate --app procrastinate_driver.app worker`` loads in each worker.
    app = make_app(
        os.environ.get(common.ENV_DSN, ""),
        int(os.environ.get(common.ENV_POOL, str(DEFAULT_CONCURRENCY))),
        application_name=common.WORKER_APP_NAME,
    )


async def apply_schema(bench_app: procrastinate.App, dsn: str) -> None:
    with common.Probe(dsn) as probe:
        installed = probe.scalar("SELECT to_regclass('procrastinate_jobs') IS NOT NULL")
        if installed:
            if probe.scalar("SELECT EXISTS (SELECT 1 FROM procrastinate_jobs)"):
                raise SystemExit(
                    "procrastinate_jobs is not empty: give the driver an empty database"
                )
            common.log("procrastinate schema already there")
            return
    await bench_app.schema_manager.apply_schema_async()
    common.log("applied procrastinate's schema")


async def enqueue_single(args, bench_app: procrastinate.App) -> tuple[float, str]:
    task = bench_app.tasks[TASK]
    counter = iter(range(args.jobs))

    async def client() -> None:
        for n in counter:
            await task.defer_async(n=n)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(args.clients)))
    return time.perf_counter() - started, f"{args.clients} clients x defer_async, one job per call"


async def enqueue_bulk(args, bench_app: procrastinate.App) -> tuple[float, str]:
    task = bench_app.tasks[TASK]
    batch = [{"n": n} for n in range(args.jobs)]
    started = time.perf_counter()
    ids = await task.batch_defer_async(*batch)
    elapsed = time.perf_counter() - started
    if len(ids) != args.jobs:
        raise SystemExit(f"batch_defer_async returned {len(ids)} ids for {args.jobs} jobs")
    return elapsed, f"one batch_defer_async call of {args.jobs} jobs"


def worker_argv(concurrency: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "procrastinate",
        "--app",
        "procrastinate_driver.app",
        "--log-level",
        "warning",
        "worker",
        "--concurrency",
        str(concurrency),
    ]


def worker_env(dsn: str, concurrency: int, done_dir: Path | None = None) -> dict[str, str]:
    env = {common.ENV_DSN: dsn, common.ENV_POOL: str(concurrency)}
    if done_dir is not None:
        env[common.ENV_DONE_DIR] = str(done_dir)
    return env


def workers_config(args) -> str:
    processes = f"{args.processes} process{'es' if args.processes > 1 else ''}"
    return f"{processes} x concurrency {args.concurrency}"


def peer(args) -> common.Peer:
    return common.Peer(
        name=SYSTEM,
        argv=worker_argv(args.concurrency),
        env=lambda done_dir: worker_env(args.dsn, args.concurrency, done_dir),
        config=workers_config(args),
        live=LIVE,
        live_what="procrastinate_jobs to have no todo/doing job",
        ready=lambda probe: probe.workers_connected("LISTEN%") >= args.processes,
        ready_what=f"{args.processes} worker(s) to LISTEN",
    )


def all_succeeded(probe: common.Probe) -> None:
    left = probe.scalar("SELECT count(*) FROM procrastinate_jobs WHERE status <> 'succeeded'")
    if left:
        raise SystemExit(f"{left} job(s) ended other than succeeded")


async def drain(args, bench_app: procrastinate.App) -> dict[str, object]:
    await bench_app.tasks[TASK].batch_defer_async(*({"n": n} for n in range(args.jobs)))
    common.log(f"deferred {args.jobs} jobs (not timed)")
    return common.drain(args, peer(args), finished=all_succeeded)


async def run(args) -> dict[str, object]:
    pool = args.clients if args.workload == "enqueue_single" else 2
    bench_app = make_app(args.dsn, pool)
    async with bench_app.open_async():
        await apply_schema(bench_app, args.dsn)
        if args.workload in ("enqueue_single", "enqueue_bulk"):
            fn = enqueue_single if args.workload == "enqueue_single" else enqueue_bulk
            elapsed, config = await fn(args, bench_app)
            return common.rate(config, args.jobs, elapsed)
        if args.workload == "drain":
            return await drain(args, bench_app)
        task = bench_app.tasks[TASK]
        return await common.latency(args, peer(args), lambda seq: task.defer_async(seq=seq))


def main(argv: list[str] | None = None) -> int:
    args = common.parse_args(SYSTEM, argv)
    if args.concurrency is None:
        args.concurrency = DEFAULT_CONCURRENCY
    if args.batch_size is not None:
        common.log("--batch-size has no procrastinate equivalent (one job per fetch): ignored")
    common.install_signal_exit()
    result = asyncio.run(run(args))
    common.emit(
        {
            "system": SYSTEM,
            "version": common.version("procrastinate"),
            "workload": args.workload,
            **result,
        }
    )
    return 0


if __name__ == "__main__":
    import procrastinate_driver  # the same code as a named module, where procrastinate wants apps

    raise SystemExit(procrastinate_driver.main())
