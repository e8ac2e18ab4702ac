"""``outbox jobs``: list live jobs, look at one, revive dead ones, cancel pending or dead ones."""

from __future__ import annotations

import getpass
import json
import sys
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from typing import Any
from uuid import UUID

import click
from rich.console import Console
from rich.text import Text

from outbox import operator
from outbox.cli.context import Context, clear_errors, migrated_connection
from outbox.cli.terminal import (
    Moment,
    console,
    escape_controls,
    json_default,
    literal,
    plain_lines,
    print_details,
    print_history,
    table,
)
from outbox.errors import InvalidJob
from outbox.moments import moment


@click.group("jobs")
def group() -> None:
    """List jobs, look at one, act on them; every action is kept in history with who did it."""


def _states(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[str, ...]:
    try:
        return tuple(operator.check_state(value.strip().lower()) for value in values)
    except InvalidJob as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


def _filter_options(func: Callable[..., Any]) -> Callable[..., Any]:
    decorators: list[Callable[[Callable[..., Any]], Callable[..., Any]]] = [
        click.option(
            "--state",
            "states",
            multiple=True,
            callback=_states,
            metavar="STATE",
            help="pending, scheduled, running or dead; repeat for several.",
        ),
        click.option("--queue", help="Jobs of this queue."),
        click.option("--type", "job_type", help="Jobs of this type."),
        click.option("--key", help="Jobs of this key."),
        click.option(
            "--since",
            type=Moment(),
            help="Enqueued at or after TIME: 2026-12-04T14:50:14Z as printed, or a time ago "
            "(90s, 30m, 1h, 2d).",
        ),
    ]
    for decorate in reversed(decorators):
        func = decorate(func)
    return func


def _where(
    states: tuple[str, ...], queue: str | None, job_type: str | None, key: str | None,
    since: datetime | None,
) -> operator.Filter:  # fmt: skip
    return operator.Filter(states=states, queue=queue, type=job_type, key=key, since=since)


@group.command("list")
@_filter_options
@click.option(
    "--after", type=click.IntRange(min=0), default=0, metavar="ID",
    help="Start after this job id (the next page, as the last line says).",
)  # fmt: skip
@click.option(
    "--limit", type=click.IntRange(1, 10_000), default=50, show_default=True,
    help="At most this many jobs.",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
@clear_errors
def list_command(
    ctx: Context, states: tuple[str, ...], queue: str | None, job_type: str | None,
    key: str | None, since: datetime | None, after: int, limit: int, as_json: bool,
) -> None:  # fmt: skip
    """Live jobs matching every filter given, oldest first (by id).

    Ended jobs (succeeded, cancelled) have left the live table: `outbox audit trail`
    shows them.
    """
    where = _where(states, queue, job_type, key, since)
    with migrated_connection(ctx) as connection:
        rows = operator.list_jobs(connection, where, after=after, limit=limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    next_after = rows[-1]["id"] if more else None
    if as_json:
        click.echo(json.dumps({"jobs": rows, "next_after": next_after}, default=json_default))
        return
    if not rows:
        click.echo("no live job matches")
        return
    print_jobs(console(), rows)
    if more:
        click.echo(f"{len(rows)} shown; more match: add --after {next_after} for the next page")


def print_jobs(out: Console, rows: list[dict[str, Any]]) -> None:
    """Jobs as blocks that fit any width: the uuid (whole, first: what is pasted next), state
    and attempt on one line, then where the job is and what it waits for, folded."""
    for row in rows:
        tries = f"attempt {row['attempt']}/{row['max_attempts'] or '-'}"
        out.print(Text(f"{row['uuid']}  {row['state']:<9}  {tries}"))
        fields: list[tuple[str, object]] = [(name, row[name]) for name in ("queue", "type", "key")]
        fields.append(("enqueued_at", moment(row["enqueued_at"])))
        if row["state"] == "scheduled":
            fields.append(("runs_at", moment(row["run_at"])))
        if row["state"] == "running":
            fields += [("relay", row["relay"]), ("lease_until", moment(row["lease_expires_at"]))]
        last_error = row["last_error"] if row["state"] == "dead" else None
        print_details(out, fields, [("error", last_error)])


@group.command("show")
@click.argument("uuid", type=click.UUID)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
@clear_errors
def show(ctx: Context, uuid: UUID, as_json: bool) -> None:
    """One job: its row while it is live, its whole history, its tracebacks.

    Times print in UTC to the second (2026-12-04T14:50:14Z), the form --since
    reads; each failed attempt's traceback follows the history as plain text.
    """
    with migrated_connection(ctx) as connection:
        job, trail = operator.show(connection, uuid)
    if job is None and not trail:
        raise click.ClickException(f"no job {uuid}: it was never enqueued here")
    if as_json:
        shown = {"job": job, "history": trail}
        click.echo(json.dumps(shown, default=json_default, indent=2))
        return
    out = console()
    if job is None:
        out.print(f"job {uuid} has ended; its history:")
        first = trail[0]
        about = (f"{name} {escape_controls(str(first[name]))}"
                 for name in ("type", "queue", "key") if first[name] is not None)  # fmt: skip
        out.print(literal("  ".join(about)))
    else:
        out.print(f"job {uuid}")
        summary = table(None, "field", "value")
        summary.show_header = False
        for name in ("state", "type", "queue", "key", "attempt", "max_attempts", "run_at",
                     "enqueued_at", "relay", "lease_expires_at", "last_error"):  # fmt: skip
            value = job[name]
            summary.add_row(name, moment(value) if isinstance(value, datetime) else literal(value))
        out.print(summary)
        out.print("history:")
    print_history(out, trail, with_job=False)
    for row in trail:
        if row["error_traceback"]:
            click.echo(f"\ntraceback of attempt {row['attempt']}, {row['event']} at "
                       f"{moment(row['at'])}:")  # fmt: skip
            for line in plain_lines(row["error_traceback"]):
                click.echo(line)


def _action_options(func: Callable[..., Any]) -> Callable[..., Any]:
    decorators: list[Callable[[Callable[..., Any]], Callable[..., Any]]] = [
        click.argument("uuids", nargs=-1, type=click.UUID),
        _filter_options,
        click.option(
            "--all", "every", is_flag=True, help="Every live job: the filter that matches all."
        ),
        click.option(
            "--yes", is_flag=True, help="Act on what a filter matched without asking first."
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
    ctx: Context, uuids: tuple[UUID, ...], states: tuple[str, ...], queue: str | None,
    job_type: str | None, key: str | None, since: datetime | None, every: bool, yes: bool,
    actor: str, reason: str | None, as_json: bool,
) -> None:  # fmt: skip
    """Revive dead jobs: back to pending now, with a fresh set of attempts.

    Name jobs by uuid, or select them with filters (or --all): the command then
    shows how many it will revive and asks first, unless --yes. Jobs that are not
    dead are skipped and counted.
    """
    where = _where(states, queue, job_type, key, since)
    _carry_out(ctx, "revived", operator.revive, operator.REVIVABLE, uuids, where, every, yes,
               actor, reason, as_json)  # fmt: skip


@group.command("cancel")
@_action_options
def cancel(
    ctx: Context, uuids: tuple[UUID, ...], states: tuple[str, ...], queue: str | None,
    job_type: str | None, key: str | None, since: datetime | None, every: bool, yes: bool,
    actor: str, reason: str | None, as_json: bool,
) -> None:  # fmt: skip
    """End pending, scheduled or dead jobs; a running job is left to its relay.

    Name jobs by uuid, or select them with filters (or --all): the command then
    shows how many it will cancel and asks first, unless --yes. Running jobs are
    skipped and counted.
    """
    where = _where(states, queue, job_type, key, since)
    _carry_out(ctx, "cancelled", operator.cancel, operator.CANCELLABLE, uuids, where, every,
               yes, actor, reason, as_json)  # fmt: skip


def interactive() -> bool:
    """Whether a person can answer a question: stdin is a terminal."""
    return sys.stdin.isatty()


def _carry_out(
    ctx: Context, verb: str, action: Callable[..., operator.Action], eligible: tuple[str, ...],
    uuids: tuple[UUID, ...], where: operator.Filter, every: bool, yes: bool, actor: str,
    reason: str | None, as_json: bool,
) -> None:  # fmt: skip
    if uuids and (every or not where.empty):
        raise click.UsageError("name jobs by uuid or select them with filters, not both")
    if not uuids and every and not where.empty:
        raise click.UsageError("--all selects every live job: give it without filters")
    if not uuids and not every and where.empty:
        raise click.UsageError(
            "name the jobs: one or more uuids, or filters (--state, --queue, --type, --key, "
            "--since), or --all for every live job"
        )
    if not actor.strip():
        raise click.ClickException("the actor must be named: who is doing this?")
    with migrated_connection(ctx) as connection:
        if uuids:
            done = action(connection, list(uuids), actor=actor, reason=reason)
            connection.commit()
            _report(done, verb, as_json)
            return
        matched = operator.list_jobs(connection, where, limit=None)
        connection.rollback()
        chosen = [row["uuid"] for row in matched if row["state"] in eligible]
        others = Counter(row["state"] for row in matched if row["state"] not in eligible)
        if not matched:
            raise click.ClickException(f"nothing {verb}: no live job matches")
        summary = _summary(verb, len(matched), len(chosen), others, eligible)
        click.echo(summary, err=as_json)
        if not chosen:
            raise click.ClickException(f"nothing {verb}: no matching job is {_either(eligible)}")
        if not yes:
            if not interactive():
                raise click.ClickException(
                    f"not {verb}: confirm with --yes (no terminal to ask on)"
                )
            if not click.confirm(f"{_ASK[verb]} {len(chosen)} job(s)?", err=True):
                raise click.ClickException(f"nothing {verb}: not confirmed")
        done = operator.act_in_batches(connection, action, chosen, actor=actor, reason=reason)
    _report(done, verb, as_json, matched=len(matched), skipped_before=dict(others))


_ASK = {"revived": "Revive", "cancelled": "Cancel"}


def _either(states: tuple[str, ...]) -> str:
    return " or ".join(filter(None, (", ".join(states[:-1]), states[-1])))


def _summary(
    verb: str, matched: int, chosen: int, others: Counter[str], eligible: tuple[str, ...]
) -> str:
    line = f"{matched} live job(s) match: {chosen} to be {verb}"
    if others:
        parts = ", ".join(f"{n} {state}" for state, n in sorted(others.items()))
        line += (
            f", {sum(others.values())} skipped ({parts}: only {_either(eligible)} jobs are {verb})"
        )
    return line


def _report(
    done: operator.Action, verb: str, as_json: bool, *, matched: int | None = None,
    skipped_before: dict[str, int] | None = None,
) -> None:  # fmt: skip
    if as_json:
        shown: dict[str, Any] = {
            verb: [str(u) for u in done.changed],
            "skipped": {str(u): why for u, why in done.skipped.items()},
        }
        if matched is not None:
            shown["matched"] = matched
            shown["skipped_by_state"] = skipped_before or {}
        click.echo(json.dumps(shown))
    else:
        click.echo(f"{verb} {len(done.changed)} job(s)")
        if matched is None or len(done.changed) <= 20:
            for uuid in done.changed:
                click.echo(f"  {uuid}")
        for uuid, why in done.skipped.items():
            click.echo(f"not {verb}: {uuid} {escape_controls(why)}", err=True)
    if not done.changed or (matched is None and done.skipped):
        raise SystemExit(1)
