"""The ``outbox`` console script: one command group, one module per subcommand."""

from __future__ import annotations

import sys
from importlib.metadata import entry_points

import click

from outbox import distribution
from outbox.cli import audit, demo, jobs, migrate, status, ui
from outbox.cli.context import Context, fail_clearly


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--dsn",
    envvar="OUTBOX_DSN",
    metavar="URL",
    help="The database: postgresql://... or postgresql+psycopg://... [env "
    "OUTBOX_DSN; default: postgres on 127.0.0.1:5432 if it answers, else the embedded "
    "server]",
)
@click.option(
    "--database",
    metavar="NAME",
    help="Use database NAME on that server in place of the DSN's (for example "
    "outbox_demo, the demo's).",
)
@click.version_option(package_name=distribution.NAME)
@click.pass_context
def cli(ctx: click.Context, dsn: str | None, database: str | None) -> None:
    """Transactional outbox and job relay on PostgreSQL.

    Applications enqueue jobs in the transaction of their own writes; relays run
    them; every step is kept in an append-only history.
    """
    ctx.obj = Context.create(dsn, database)


cli.add_command(migrate.command)
cli.add_command(status.command)
cli.add_command(demo.command)
cli.add_command(jobs.group)
cli.add_command(audit.group)
cli.add_command(audit.prune_command)
cli.add_command(ui.command)
# Commands of other packages (the relay's), found by entry point so outbox never imports them.
for entry in entry_points(group="outbox.commands"):
    cli.add_command(entry.load(), entry.name)


def main() -> None:
    with fail_clearly():
        cli.main(prog_name="outbox", standalone_mode=True)
    sys.exit(0)  # pragma: no cover - cli.main exits itself
