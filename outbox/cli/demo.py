"""``outbox demo``: a small ledger that enqueues its postings through outbox."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import click
from rich.console import Console

from outbox.cli.context import Context, clear_errors
from outbox.database import database_name, sqlalchemy_url, with_database
from outbox.errors import ConfigurationError

DATABASE = "outbox_demo"  # outbox.demo.run.DATABASE, without importing the demo for --help


def _database(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        return database_name(value)
    except ConfigurationError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command("demo")
@click.option("--transfers", default=50, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--accounts", default=5, show_default=True, type=click.IntRange(2, 1000))
@click.option(
    "--database",
    default=DATABASE,
    show_default=True,
    metavar="NAME",
    callback=_database,
    help="The demo's database: made if absent, remade if an earlier demo made it, refused "
    "otherwise.",
)
@click.pass_obj
@clear_errors
def command(ctx: Context, transfers: int, accounts: int, database: str) -> None:
    """Run a double-entry ledger: transfers write entries and enqueue jobs in one transaction.

    Each posting also publishes a transfer.posted event to a local webhook receiver, which
    checks the signature and applies each message once with the inbox.

    Uses a database of its own (outbox_demo unless --database says otherwise) on the
    server of OUTBOX_DSN, else of 127.0.0.1:5432, else the embedded one. It drops only a
    database that an earlier demo made, so nothing else there is touched. At the end it
    prints the command that shows its database with outbox status.
    """
    from outbox.demo.run import run

    inspect = f"{_program()} --database {database} status"
    if ctx.server.source == "dsn":
        url = sqlalchemy_url(with_database(ctx.dsn, database)).set(drivername="postgresql")
        shown = url.render_as_string(hide_password=True)
        inspect = f"OUTBOX_DSN='{shown}' {_program()} status"
        if url.password is not None:
            inspect += " (with your password in place of ***)"
    ok = run(
        ctx.dsn, Console(), database=database, transfers=transfers, accounts=accounts,
        inspect=inspect,
    )  # fmt: skip
    if not ok:
        raise SystemExit(1)


def _program() -> str:
    """How to run this outbox from here: ``outbox`` if PATH finds it, else its path."""
    script = Path(sys.argv[0])
    if script.name != "outbox":  # python -m outbox, or a test runner
        return "outbox"
    found = shutil.which("outbox")
    if found and Path(found).resolve() == script.resolve():
        return "outbox"
    relative = os.path.relpath(script.resolve())
    return str(script.resolve()) if relative.startswith("..") else relative
