"""``outbox status``: what is queued, by queue and state."""

from __future__ import annotations

import contextlib
import json
import time

import click
import sqlalchemy as sa
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from outbox import migrate
from outbox.cli.context import Context, clear_errors
from outbox.cli.terminal import literal
from outbox.status import Status, snapshot


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option(
    "--watch", type=click.FloatRange(min=0.5), metavar="SECONDS", default=None,
    help="Redraw every SECONDS until interrupted.",
)  # fmt: skip
@click.pass_obj
@clear_errors
def command(ctx: Context, as_json: bool, watch: float | None) -> None:
    """Queues by state, the oldest ready job's age, the last minute's outcomes, dead jobs,
    keys blocked by a dead job, and the relays alive now."""
    engine = ctx.engine(poolclass=sa.NullPool)
    try:
        with engine.connect() as connection:
            migrate.check_at_head(connection)
            connection.rollback()
            if watch is None:
                _show(snapshot(connection), as_json)
                return
            with contextlib.suppress(KeyboardInterrupt), Live(auto_refresh=False) as live:
                while True:
                    current = snapshot(connection)
                    connection.rollback()
                    live.update(Group(*tables(current)), refresh=True)
                    time.sleep(watch)
    finally:
        engine.dispose()


def _show(current: Status, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(current.as_dict(), indent=2))
    else:
        render(current, Console())


def render(current: Status, console: Console) -> None:
    for table in tables(current):
        console.print(table)


def tables(current: Status) -> list[Table]:
    table = Table(title="outbox queues", title_justify="left")
    for name in ("queue", "ready", "scheduled", "running", "dead", "oldest ready",
                 "last minute: done / retried / dead"):  # fmt: skip
        table.add_column(name, justify="left" if name == "queue" else "right")
    names = sorted({q.queue for q in current.queues} | set(current.last_minute))
    depth = {q.queue: q for q in current.queues}
    for name in names:
        q = depth.get(name)
        counts = (q.ready, q.scheduled, q.running, q.dead) if q else (0, 0, 0, 0)
        age = (
            "-" if q is None or q.oldest_ready_seconds is None else f"{q.oldest_ready_seconds:.1f}s"
        )
        minute = current.last_minute.get(name, {})
        ends = " / ".join(str(minute.get(e, 0)) for e in ("succeeded", "retried", "dead"))
        table.add_row(literal(name), *(str(n) for n in counts), age, ends)
    if not names:
        table.add_row("(no live jobs)", "", "", "", "", "", "")
    shown = [table]
    if current.blocked_keys:
        blocked = Table(title="keys blocked by a dead job", title_justify="left")
        for name in ("queue", "key", "dead job", "type", "waiting"):
            blocked.add_column(name)
        for b in current.blocked_keys:
            blocked.add_row(*(literal(v) for v in (b.queue, b.key, b.uuid, b.type, b.waiting)))
        shown.append(blocked)
    relays = Table(title="relays alive", title_justify="left")
    for name in ("relay", "queues", "concurrency", "version", "last heartbeat"):
        relays.add_column(name)
    for r in current.relays:
        relays.add_row(literal(r.relay), literal(",".join(r.queues)), str(r.concurrency),
                       literal(r.version), f"{r.heartbeat_age_seconds:.1f}s ago")  # fmt: skip
    if not current.relays:
        relays.add_row("(none)", "", "", "", "")
    shown.append(relays)
    return shown
