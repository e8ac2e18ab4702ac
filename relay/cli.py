"""``outbox relay``: run the jobs of an application's registry."""

from __future__ import annotations

import dataclasses

import click
import psycopg
import sqlalchemy as sa

from outbox import migrate
from outbox.cli.context import Context, clear_errors

from . import log, preflight, supervisor
from .app import load_registry
from .http import DEFAULT_ADDR, parse_addr
from .worker import Worker


@click.command("relay")
@click.option("--app", required=True, metavar="MODULE:REGISTRY", help="The outbox.Registry to run.")
@click.option(
    "--queues",
    metavar="A,B",
    help="Queues to take jobs from, comma-separated. [default: every queue the handlers name]",
)
@click.option(
    "--concurrency",
    type=click.IntRange(1, 1024),
    help="Handlers run at once per process. [env OUTBOX_CONCURRENCY; default: 16]",
)
@click.option(
    "--processes", type=click.IntRange(1, 64), default=1, show_default=True,
    help="Relay processes under one supervisor, which restarts any that dies.",
)  # fmt: skip
@click.option(
    "--log-format", type=click.Choice(["auto", "json", "console"]), default="auto",
    show_default=True, help="auto: colour on a terminal, JSON lines otherwise.",
)  # fmt: skip
@click.option(
    "--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info"
)
@click.option(
    "--metrics-addr", default=DEFAULT_ADDR, show_default=True, metavar="HOST:PORT",
    help="Where /metrics, /healthz and /readyz are served; 'off' for nowhere. "
    "Bind to 0.0.0.0 only on purpose.",
)  # fmt: skip
@click.pass_obj
@clear_errors
def command(
    ctx: Context,
    app: str,
    queues: str | None,
    concurrency: int | None,
    processes: int,
    log_format: str,
    log_level: str,
    metrics_addr: str,
) -> None:
    """Claim, run and complete jobs until SIGTERM or SIGINT.

    The first signal stops claiming, lets running handlers finish within the grace
    period (OUTBOX_SHUTDOWN_GRACE, default 30s) and exits 0; a second exits at once.
    Jobs never started are given back; jobs left running are rescued when their
    lease (OUTBOX_LEASE) expires. Run as many relays, on as many machines, as you like.
    """
    log.configure(log_format, log_level)
    addr = None if metrics_addr.lower() in ("off", "") else parse_addr(metrics_addr)
    registry = load_registry(app)
    settings = ctx.settings
    if concurrency is not None:
        settings = dataclasses.replace(settings, concurrency=concurrency)
    chosen = [q.strip() for q in queues.split(",") if q.strip()] if queues else None
    dsn = ctx.dsn
    engine = ctx.engine(poolclass=sa.NullPool)
    try:
        with engine.connect() as connection:
            migrate.check_at_head(connection)
    finally:
        engine.dispose()
    try:
        preflight.check(dsn, settings)
    except preflight.UnfitConnection as exc:  # the DSN is wrong for a relay: a usage error
        raise click.UsageError(str(exc)) from None
    except psycopg.OperationalError as exc:
        raise click.ClickException(f"cannot reach the database: {log.first_line(exc)}") from None
    if processes > 1:
        # The DSN goes to the children in their environment, never on a command line.
        child = ["-m", "outbox", "relay", "--app", app, "--processes", "1"]
        child += ["--metrics-addr", "off"]  # the supervisor serves them for all
        child += ["--log-format", log_format, "--log-level", log_level]
        if queues:
            child += ["--queues", queues]
        if concurrency:
            child += ["--concurrency", str(concurrency)]
        grace = settings.shutdown_grace.total_seconds()
        raise SystemExit(supervisor.run_processes(child, processes, grace, dsn, addr))
    worker = Worker(registry, dsn, settings, queues=chosen, metrics_addr=addr)
    raise SystemExit(supervisor.run_worker(worker))
