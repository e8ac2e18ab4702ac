"""``outbox status``: what is queued, by queue and state."""

from __future__ import annotations

import contextlib
import json
import time
from datetime import datetime

import click
import sqlalchemy as sa
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from outbox import migrate
from outbox.cli.context import Context, clear_errors
from outbox.cli.terminal import console, literal, table
from outbox.moments import duration, moment
from outbox.schedule import GRACE
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
    keys blocked by a dead job, job types no live relay can run, and the relays alive now."""
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
        render(current, console())


def render(current: Status, out: Console) -> None:
    for shown in tables(current):
        out.print(shown)


def tables(current: Status) -> list[Table]:
    """One table per concern, each fitting 80 columns: uuids whole, long text folded."""
    queues = table(
        "outbox queues", "queue", "ready", "scheduled", "running", "dead", "oldest\nready",
        "last minute\ndone/retried/dead", right=("ready", "scheduled", "running", "dead",
        "oldest\nready", "last minute\ndone/retried/dead"),
    )  # fmt: skip
    queues.columns[-1].min_width = len("done/retried/dead")
    names = sorted({q.queue for q in current.queues} | set(current.last_minute))
    depth = {q.queue: q for q in current.queues}
    for name in names:
        q = depth.get(name)
        counts = (q.ready, q.scheduled, q.running, q.dead) if q else (0, 0, 0, 0)
        age = (
            "-" if q is None or q.oldest_ready_seconds is None else duration(q.oldest_ready_seconds)
        )
        minute = current.last_minute.get(name, {})
        ends = "/".join(str(minute.get(e, 0)) for e in ("succeeded", "retried", "dead"))
        queues.add_row(literal(name), *(str(n) for n in counts), age, ends)
    if not names:
        queues.add_row("(no live jobs)", "", "", "", "", "", "")
    shown = [queues]
    if current.blocked_keys:
        blocked = table(
            "keys blocked by a dead job", "queue", "key", "dead job", "type", "waiting",
            uuid="dead job", right=("waiting",),
        )  # fmt: skip
        for b in current.blocked_keys:
            blocked.add_row(*(literal(v) for v in (b.queue, b.key, b.uuid, b.type, b.waiting)))
        shown.append(blocked)
    if current.unrunnable:
        # Relays claim only the types they have handlers for: these wait for one that does.
        title = "job types no live relay can run"
        waiting = table(title, "queue", "type", "jobs", "oldest\nwaiting",
                        right=("jobs", "oldest\nwaiting"))  # fmt: skip
        waiting.min_width = len(title)  # the title on one line
        for u in current.unrunnable:
            waiting.add_row(literal(u.queue), literal(u.type), str(u.jobs),
                            duration(u.oldest_seconds))  # fmt: skip
        shown.append(waiting)
    if current.schedules:
        # Periodic jobs; a next tick overdue means no relay that declares the schedule runs.
        schedules = table("schedules", "schedule", "type", "spec", "last tick", "next tick")
        for column in schedules.columns[3:]:  # times whole, as an operator pastes them
            column.no_wrap, column.min_width = True, len("2026-12-04T14:50:14Z")
        for s in current.schedules:
            spec = literal(s.spec)
            if s.timezone != "UTC":
                spec.append("\n").append_text(literal(s.timezone))
            late = GRACE.total_seconds() < s.overdue_seconds
            schedules.add_row(
                literal(s.name), literal(s.type), spec, _moment(s.last_tick) or "-",
                _moment(s.next_tick) + (f"\noverdue {duration(s.overdue_seconds)}" if late else ""),
            )  # fmt: skip
        shown.append(schedules)
    relays = table(
        "relays alive", "relay", "queues", "concurrency", "version", "last heartbeat",
        right=("concurrency",),
    )  # fmt: skip
    for r in current.relays:
        relays.add_row(literal(r.relay), literal(",".join(r.queues)), str(r.concurrency),
                       literal(r.version), f"{duration(r.heartbeat_age_seconds)} ago")  # fmt: skip
    if not current.relays:
        relays.add_row("(none)", "", "", "", "")
    shown.append(relays)
    return shown


def _moment(iso: str | None) -> str:
    return moment(None if iso is None else datetime.fromisoformat(iso))
