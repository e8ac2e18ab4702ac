"""``outbox status``: what is queued, by queue and state."""

from __future__ import annotations

import json

import click
import sqlalchemy as sa
from rich.console import Console
from rich.table import Table

from outbox import migrate
from outbox.cli.context import Context, clear_errors
from outbox.status import Status, snapshot


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_obj
@clear_errors
def command(ctx: Context, as_json: bool) -> None:
    """Depth per queue and state, the oldest ready job's age, and keys blocked by dead jobs."""
    engine = ctx.engine(poolclass=sa.NullPool)
    try:
        with engine.connect() as connection:
            migrate.check_at_head(connection)
            current = snapshot(connection)
    finally:
        engine.dispose()
    if as_json:
        click.echo(json.dumps(current.as_dict(), indent=2))
    else:
        render(current, Console())


def render(current: Status, console: Console) -> None:
    table = Table(title="outbox queues", title_justify="left")
    for name in ("queue", "ready", "scheduled", "running", "dead", "oldest ready"):
        table.add_column(name, justify="left" if name == "queue" else "right")
    for q in current.queues:
        age = "-" if q.oldest_ready_seconds is None else f"{q.oldest_ready_seconds:.1f}s"
        table.add_row(q.queue, *(str(n) for n in (q.ready, q.scheduled, q.running, q.dead)), age)
    if not current.queues:
        table.add_row("(no live jobs)", "", "", "", "", "")
    console.print(table)
    if current.blocked_keys:
        blocked = Table(title="keys blocked by a dead job", title_justify="left")
        for name in ("queue", "key", "dead job", "type", "waiting"):
            blocked.add_column(name)
        for b in current.blocked_keys:
            blocked.add_row(b.queue, b.key, b.uuid, b.type, str(b.waiting))
        console.print(blocked)
