"""``outbox demo``: a small ledger that enqueues its postings through outbox."""

from __future__ import annotations

import click
from rich.console import Console

from outbox.cli.context import Context, clear_errors


@click.command("demo")
@click.option("--transfers", default=50, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--accounts", default=5, show_default=True, type=click.IntRange(2, 1000))
@click.pass_obj
@clear_errors
def command(ctx: Context, transfers: int, accounts: int) -> None:
    """Run a double-entry ledger: transfers write entries and enqueue jobs in one transaction.

    Uses a database named outbox_demo, made afresh on the server of OUTBOX_DSN
    (or the embedded server), so nothing else there is touched.
    """
    from outbox.demo.run import run

    embedded = not ctx.settings.dsn
    if not run(ctx.dsn, Console(), transfers=transfers, accounts=accounts, embedded=embedded):
        raise SystemExit(1)
