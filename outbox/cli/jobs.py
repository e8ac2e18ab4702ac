"""``outbox jobs``: look at one job, revive dead ones, cancel pending or dead ones."""

from __future__ import annotations

import getpass
import json
from collections.abc import Callable
from typing import Any
from uuid import UUID

import click
from rich.console import Console
from rich.table import Table

from outbox import operator
from outbox.cli.context import Context, clear_errors, migrated_connection
from outbox.cli.terminal import escape_controls, literal


@click.group("jobs")
def group() -> None:
    """Look at jobs and act on them; every action is kept in history with who did it."""


@group.command("show")
@click.argument("uuid", type=click.UUID)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
@clear_errors
def show(ctx: Context, uuid: UUID, as_json: bool) -> None:
    """The job (while it is live) and every transition in its history."""
    with migrated_connection(ctx) as connection:
        job, trail = operator.show(connection, uuid)
    if job is None and not trail:
        raise click.ClickException(f"no job {uuid}: it was never enqueued here")
    if as_json:
        click.echo(json.dumps({"job": job, "history": trail}, default=str, indent=2))
        return
    console = Console()
    if job is None:
        console.print(f"job {uuid} has ended; its history:")
    else:
        summary = Table(show_header=False, title=f"job {uuid}", title_justify="left")
        for name in ("type", "queue", "key", "state", "attempt", "max_attempts", "run_at",
                     "enqueued_at", "relay", "lease_expires_at", "last_error"):  # fmt: skip
            summary.add_row(name, literal(job[name]))
        console.print(summary)
    trail_table = Table(title="history", title_justify="left")
    for name in ("at", "event", "attempt", "relay", "actor", "detail"):
        trail_table.add_column(name)
    for row in trail:
        detail = (row["error"] or {}).get("message") or row["reason"] or row["run_at"] or ""
        shown = (row["at"], row["event"], row["attempt"], row["relay"], row["actor"], detail)
        trail_table.add_row(*(literal(value) for value in shown))
    console.print(trail_table)


def _action_options(func: Callable[..., Any]) -> Callable[..., Any]:
    decorators: list[Callable[[Callable[..., Any]], Callable[..., Any]]] = [
        click.argument("uuids", nargs=-1, type=click.UUID),
        click.option(
            "--key", help="Every eligible job of this key instead of (or as well as) uuids."
        ),
        click.option(
            "--actor",
            default=getpass.getuser,
            show_default="your OS user",
            help="Who is acting, for the history.",
        ),
        click.option("--reason", help="Why, for the history."),
        click.option("--json", "as_json", is_flag=True, help="Print JSON."),
        click.pass_obj,
        clear_errors,
    ]
    for decorate in reversed(decorators):
        func = decorate(func)
    return func


@group.command("retry")
@_action_options
def retry(
    ctx: Context, uuids: tuple[UUID, ...], key: str | None, actor: str, reason: str | None,
    as_json: bool,
) -> None:  # fmt: skip
    """Revive dead jobs: back to pending, with a fresh set of attempts.

    Exits 1 if any named job could not be revived (it is not dead, or not live).
    """
    with migrated_connection(ctx) as connection:
        done = operator.revive(connection, uuids, key=key, actor=actor, reason=reason)
        connection.commit()
    _report(done, "revived", as_json)


@group.command("cancel")
@_action_options
def cancel(
    ctx: Context, uuids: tuple[UUID, ...], key: str | None, actor: str, reason: str | None,
    as_json: bool,
) -> None:  # fmt: skip
    """End pending or dead jobs; a running job is left to its relay.

    Exits 1 if any named job could not be cancelled.
    """
    with migrated_connection(ctx) as connection:
        done = operator.cancel(connection, uuids, key=key, actor=actor, reason=reason)
        connection.commit()
    _report(done, "cancelled", as_json)


def _report(done: operator.Action, verb: str, as_json: bool) -> None:
    if as_json:
        skipped = {str(u): why for u, why in done.skipped.items()}
        click.echo(json.dumps({verb: [str(u) for u in done.changed], "skipped": skipped}))
    else:
        click.echo(f"{verb} {len(done.changed)} job(s)")
        for uuid in done.changed:
            click.echo(f"  {uuid}")
        for uuid, why in done.skipped.items():
            click.echo(f"not {verb}: {uuid} {escape_controls(why)}", err=True)
    if done.skipped or not done.changed:
        raise SystemExit(1)
