"""``outbox relay``: run the jobs of an application's registry."""

from __future__ import annotations

import dataclasses
import os

import click
import psycopg
import sqlalchemy as sa

from outbox import collector, migrate
from outbox.cli.context import Context, clear_errors
from outbox.errors import ConfigurationError

from . import log, preflight, supervisor
from .app import load_registry
from .http import DEFAULT_ADDR, parse_addr
from .queues import MAX_THREADS, QueueChoice, parse_queues
from .worker import Worker


class QueuesParam(click.ParamType[QueueChoice]):
    """``a,b`` (shared threads) or ``a=N,b=N`` (a limit per queue): relay/queues.py."""

    name = "queues"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> QueueChoice:
        if isinstance(value, QueueChoice):
            return value
        try:
            return parse_queues(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


@click.command("relay")
@click.option("--app", required=True, metavar="MODULE:REGISTRY", help="The outbox.Registry to run.")
@click.option(
    "--queues", type=QueuesParam(), envvar="OUTBOX_QUEUES", metavar="A,B|A=N,B=N",
    help="Queues to take jobs from, comma-separated. A=N lets at most N jobs of queue A run "
    "at once per process, and the threads are the limits' sum. "
    "[env OUTBOX_QUEUES; default: every queue the handlers name]",
)  # fmt: skip
@click.option(
    "--concurrency",
    type=click.IntRange(1, MAX_THREADS),
    help="Handlers run at once per process. [env OUTBOX_CONCURRENCY; default: 16, or the "
    "sum of the queues' limits]",
)
@click.option(
    "--processes", type=click.IntRange(1, 64), default=1, show_default=True,
    help="Relay processes under one supervisor, which forks them once the application is "
    "loaded and restarts any that dies. Concurrency and queue limits apply to each process.",
)  # fmt: skip
@click.option(
    "--log-format", type=click.Choice(["auto", "json", "console"]), default="auto",
    show_default=True, help="auto: colour on a terminal, JSON lines otherwise.",
)  # fmt: skip
@click.option(
    "--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info"
)
@click.option(
    "--metrics-addr", envvar="OUTBOX_METRICS_ADDR", default=DEFAULT_ADDR, metavar="HOST:PORT",
    help="Where /metrics, /healthz and /readyz are served; 'off' for nowhere. "
    f"Bind to 0.0.0.0 only on purpose. [env OUTBOX_METRICS_ADDR; default: {DEFAULT_ADDR}]",
)  # fmt: skip
@click.pass_obj
@clear_errors
def command(
    ctx: Context,
    app: str,
    queues: QueueChoice | None,
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
    # Collection stays paused while the application loads and the relay connects; each relay
    # process gives it back when it freezes its start-up heap (worker.settle_garbage_collector).
    with collector.paused():
        log.configure(log_format, log_level)
        addr = _metrics_addr(metrics_addr)
        settings = ctx.settings
        if queues is not None and queues.threads is not None:
            threads = _threads_for_limits(queues, concurrency, settings.concurrency)
            settings = dataclasses.replace(settings, concurrency=threads)
        elif concurrency is not None:
            settings = dataclasses.replace(settings, concurrency=concurrency)
        registry = load_registry(app)
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
            raise click.ClickException(
                f"cannot reach the database: {log.first_line(exc)}"
            ) from None

        def relay_worker(metrics_addr: tuple[str, int] | None) -> Worker:
            return Worker(
                registry, dsn, settings,
                queues=queues.names if queues is not None and queues.limits is None else None,
                queue_limits=queues.limits if queues is not None else None,
                metrics_addr=metrics_addr,
            )  # fmt: skip

        if processes > 1:
            # The DSN goes to the children in their environment, never on a command line.
            child = ["-m", "outbox", "relay", "--app", app, "--processes", "1"]
            child += ["--metrics-addr", "off"]  # the supervisor serves them for all
            child += ["--log-format", log_format, "--log-level", log_level]
            if queues is not None:
                child += ["--queues", str(queues)]
            if concurrency:
                child += ["--concurrency", str(concurrency)]
            grace = settings.shutdown_grace.total_seconds()
            # The first processes are forked from this one, the same relay (relay/forked.py);
            # one that dies is started again from `child`.
            fork = lambda: supervisor.run_worker(relay_worker(None))  # noqa: E731
            raise SystemExit(supervisor.run_processes(child, processes, grace, dsn, addr, fork))
        raise SystemExit(supervisor.run_worker(relay_worker(addr)))


def _metrics_addr(text: str) -> tuple[str, int] | None:
    """Where to serve metrics, from --metrics-addr or else OUTBOX_METRICS_ADDR; None for
    'off'. A bad value names where it came from."""
    if text.strip().lower() in ("off", ""):
        return None
    try:
        return parse_addr(text.strip())
    except ConfigurationError as exc:
        source = click.get_current_context().get_parameter_source("metrics_addr")
        if source is not click.core.ParameterSource.ENVIRONMENT:
            raise
        raise ConfigurationError(
            str(exc).replace("--metrics-addr", "OUTBOX_METRICS_ADDR", 1)
        ) from None


def _threads_for_limits(queues: QueueChoice, option: int | None, setting: int) -> int:
    """The handler threads of a process whose queues have limits: their sum. A concurrency
    given as well (--concurrency, else OUTBOX_CONCURRENCY) must agree with it, not be
    dropped in silence."""
    assert queues.threads is not None
    threads = queues.threads
    source = click.get_current_context().get_parameter_source("queues")
    named = (
        f"OUTBOX_QUEUES={queues}"
        if source == click.core.ParameterSource.ENVIRONMENT
        else f"--queues {queues}"
    )
    if option is not None:
        given = f"--concurrency {option}"
    elif os.environ.get("OUTBOX_CONCURRENCY", "").strip():
        given = f"OUTBOX_CONCURRENCY={setting}"
    else:
        return threads
    if (option if option is not None else setting) != threads:
        raise click.UsageError(
            f"{given} contradicts {named}: a process runs the sum of the queues' limits, "
            f"{threads} handlers at once; leave the concurrency out, or make it {threads}"
        )
    return threads
