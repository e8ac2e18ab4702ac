"""``outbox audit`` and ``outbox prune``: seal, verify, keep digests, query, export, prune."""

from __future__ import annotations

import csv
import getpass
import json
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import click

from outbox.audit import chain, redaction, retention, seal, trail, verify
from outbox.cli.context import Context, clear_errors, migrated_connection
from outbox.cli.terminal import Moment, console, json_default, print_history
from outbox.inbox import prune as prune_inbox
from outbox.moments import duration
from outbox.settings import parse_duration


@click.group("audit")
def group() -> None:
    """Tamper evidence and audit queries over the append-only history (G7).

    Relays seal history into a digest chain as it settles; these commands check the
    chain, print its latest digest for safe keeping elsewhere, query the history and
    export it before `outbox prune`.
    """


@group.command("verify")
@click.option(
    "--against",
    "against_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A file of digests kept elsewhere (lines '<seal id> <digest>' as `audit digest` "
    "prints): the chain recomputed from history must reach each of them.",
)
@click.option("--from-seal", type=click.IntRange(min=1), default=1, help="First seal to recompute.")
@click.option("--to-seal", type=click.IntRange(min=1), help="Last seal to recompute.")
@click.option(
    "--export",
    "export_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Check an export file instead of the database (needs no database).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
@clear_errors
def verify_command(
    ctx: Context, against_path: Path | None, from_seal: int, to_seal: int | None,
    export_path: Path | None, as_json: bool,
) -> None:  # fmt: skip
    """Recompute every seal from the history rows it covers.

    Exits 0 when the chain holds, 1 naming the first seal and history row that do not
    match (or an exported digest the recomputed chain does not reach).
    """
    started = time.perf_counter()
    if export_path is not None:
        checked = retention.verify_export(export_path)
        result: dict[str, Any] = {
            "ok": True, "export": str(export_path), "seals": len(checked.seals),
            "rows": checked.rows, "last_digest": checked.seals[-1].digest.hex(),
        }  # fmt: skip
    else:
        against = verify.read_digests(against_path) if against_path else None
        if to_seal is not None and to_seal < from_seal:
            raise click.UsageError("--to-seal must not be before --from-seal")
        with migrated_connection(ctx) as connection:
            report = verify.verify(
                connection, from_seal=from_seal, to_seal=to_seal, against=against
            )
        result = {
            "ok": True, "seals": report.seals, "rows": report.rows,
            "pruned_seals": report.pruned_seals, "last_seal": report.last_seal,
            "last_digest": report.last_digest.hex() if report.last_digest else None,
            "checked_against": report.checked_against,
        }  # fmt: skip
    result["seconds"] = round(time.perf_counter() - started, 3)
    if as_json:
        click.echo(json.dumps(result))
    elif export_path is not None:
        click.echo(
            f"export verified: {result['seals']} seals, {result['rows']} rows "
            f"in {result['seconds']}s; last digest {result['last_digest']}"
        )
    elif not result["seals"]:
        click.echo("no seals yet: nothing to verify (relays seal history as it settles)")
    else:
        against_note = (
            f"; {result['checked_against']} exported digest(s) matched" if against_path else ""
        )
        click.echo(
            f"chain verified: {result['seals']} seals, {result['rows']} rows recomputed "
            f"({result['pruned_seals']} pruned seals chained by digest) in "
            f"{result['seconds']}s{against_note}; last seal {result['last_seal']} digest "
            f"{result['last_digest']}"
        )


@group.command("digest")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
@clear_errors
def digest_command(ctx: Context, as_json: bool) -> None:
    """Print the latest seal's id and digest, to keep somewhere this database cannot reach.

    Append the line to a file kept elsewhere (a ticket, an object store with a retention
    lock); `outbox audit verify --against FILE` then catches even a superuser who rewrites
    history and recomputes every seal after it.
    """
    with migrated_connection(ctx) as connection:
        last = chain.latest_seal(connection)
    if last is None:
        raise click.ClickException("no seals yet: start a relay (it seals) or run `audit seal`")
    if as_json:
        click.echo(json.dumps({"seal": last.id, "digest": last.digest.hex(),
                               "sealed_at": last.sealed_at.isoformat()}))  # fmt: skip
    else:
        click.echo(f"{last.id} {last.digest.hex()} {last.sealed_at.isoformat()}")


@group.command("seal")
@click.pass_obj
@clear_errors
def seal_command(ctx: Context) -> None:
    """Seal what history has settled now (relays do this by themselves)."""
    with migrated_connection(ctx) as connection:
        sealed = seal.seal_all(connection)
    rows = sum(s.row_count for s in sealed)
    click.echo(f"sealed {rows} rows in {len(sealed)} seal(s)")


@group.command("trail")
@click.option("--job", type=click.UUID, help="One job's uuid.")
@click.option("--key", help="Every job of a key.")
@click.option("--type", "job_type", help="Every job of a type.")
@click.option("--actor", help="Operator actions by this actor.")
@click.option(
    "--since", type=Moment(),
    help="From TIME: 2026-12-04T14:50:14Z as printed (UTC unless an offset is given), or a "
    "time ago (90s, 30m, 1h, 2d).",
)  # fmt: skip
@click.option("--until", type=Moment(), help="Before TIME, in the same forms.")
@click.option(
    "--limit", type=click.IntRange(min=1), default=10_000, show_default=True,
    help="At most this many rows.",
)  # fmt: skip
@click.option(
    "--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table",
    show_default=True,
)  # fmt: skip
@click.pass_obj
@clear_errors
def trail_command(
    ctx: Context, job: UUID | None, key: str | None, job_type: str | None, actor: str | None,
    since: datetime | None, until: datetime | None, limit: int, fmt: str,
) -> None:  # fmt: skip
    """What happened to jobs: every history row matching all the filters, oldest first."""
    with migrated_connection(ctx) as connection:
        rows = trail.trail(
            connection, job=job, key=key, type=job_type, actor=actor, since=since, until=until,
            limit=limit,
        )  # fmt: skip
    if fmt == "json":
        click.echo(json.dumps(rows, default=json_default, indent=2))
    elif fmt == "csv":
        # Exact values, control characters and all: CSV is data for the tools that read it.
        writer = csv.DictWriter(sys.stdout, fieldnames=list(trail.COLUMNS))
        writer.writeheader()
        writer.writerows(
            {k: json_default(v) if isinstance(v, datetime) else v for k, v in row.items()}
            for row in rows
        )
    else:
        out = console()
        more = "; that is --limit: there may be more" if len(rows) == limit else ""
        out.print(f"{len(rows)} history row(s), oldest first{more}")
        print_history(out, rows, with_job=True)


@group.command("export")
@click.option(
    "--out", "out_path", type=click.Path(dir_okay=False, writable=True, path_type=Path),
    required=True, help="The JSON Lines file to write (refused if it exists).",
)  # fmt: skip
@click.option("--through-seal", type=click.IntRange(min=1), help="Last seal to export.")
@click.pass_obj
@clear_errors
def export_command(ctx: Context, out_path: Path, through_seal: int | None) -> None:
    """Write sealed history not yet pruned, with its seals, as JSON Lines.

    Each row is written as exactly the text that was hashed, so the file can be checked
    with `outbox audit verify --export FILE`, or with any SHA-256 tool, years later.
    """
    try:
        handle = out_path.open("x", encoding="utf-8")
    except FileExistsError:
        raise click.UsageError(f"{out_path} exists: exports are never overwritten") from None
    except OSError as exc:
        raise click.UsageError(f"cannot write {out_path}: {exc}") from None
    try:
        with handle, migrated_connection(ctx) as connection:
            written = retention.export(connection, handle, through_seal=through_seal)
    except BaseException:
        out_path.unlink(missing_ok=True)  # never leave half an export behind
        raise
    click.echo(
        f"exported {len(written.seals)} seal(s), {written.rows} rows to {out_path}; last seal "
        f"{written.seals[-1].id} digest {written.seals[-1].digest.hex()}"
    )


@group.command("redaction")
@click.argument("state", type=click.Choice(["on", "off", "show"]), default="show")
@click.pass_obj
@clear_errors
def redaction_command(ctx: Context, state: str) -> None:
    """Keep payloads and errors in history (off, the default) or only their SHA-256 (on).

    On, history keeps each payload's SHA-256 instead of the payload, and each failed
    attempt's error type and SHA-256 instead of its message and traceback (messages can
    quote payload values); outbox_jobs.last_error keeps the message's SHA-256. Applies to
    every enqueue and failure from then on; rows already written stay as they are (history
    is append-only). Needs the tables' owner.
    """
    with migrated_connection(ctx) as connection:
        if state != "show":
            redaction.switch(connection, on=state == "on")
        now = redaction.state(connection)
    if now.on and now.off:
        click.echo(
            f"payload redaction is partly on (on: {', '.join(now.on)}; off: {', '.join(now.off)}): "
            "run `outbox audit redaction on` or `off`"
        )
    else:
        click.echo(f"payload redaction is {'off' if now.off else 'on'}")


@click.command("prune")
@click.option(
    "--export", "export_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The export (from `outbox audit export`) that holds what may be removed; without "
    "it only expired idempotency keys and inbox receipts are removed.",
)  # fmt: skip
@click.option(
    "--older-than", default="365d", show_default=True, metavar="DURATION",
    help="Keep seals younger than this (e.g. 90d).",
)  # fmt: skip
@click.option(
    "--actor", default=getpass.getuser, show_default="your OS user",
    help="Who prunes, recorded in the prune's seal.",
)  # fmt: skip
@click.pass_obj
@clear_errors
def prune_command(ctx: Context, export_path: Path | None, older_than: str, actor: str) -> None:
    """Remove whole sealed ranges of history that an export holds, expired idempotency keys,
    and inbox receipts past their retention.

    The export is verified first and must agree with the database's seals. The prune is
    recorded as a link of the digest chain, so `audit verify` still holds across the gap.
    """
    try:
        keep = parse_duration(older_than, name="--older-than")
    except Exception as exc:
        raise click.UsageError(str(exc)) from None
    with migrated_connection(ctx) as connection:
        done = retention.prune(connection, export_path=export_path, older_than=keep, actor=actor)
        settings = ctx.settings
        receipts_kept = max(settings.inbox_retention, settings.idempotency_retention)
        receipts = prune_inbox(connection, receipts_kept)
    if export_path is None:
        click.echo("history kept: no --export given")
    elif done.prune_seal is None:
        click.echo(f"history kept: no seal in {export_path} is older than {older_than}")
    else:
        click.echo(
            f"pruned {done.rows} history rows of {done.seals} seal(s); recorded as seal "
            f"{done.prune_seal}"
        )
    click.echo(f"removed {done.idempotency_keys} expired idempotency key(s)")
    click.echo(
        f"removed {receipts} inbox receipt(s) older than {duration(receipts_kept.total_seconds())}"
    )
