"""The ``outbox`` console script: one command group, one module per subcommand."""

from __future__ import annotations

import functools
import importlib
import sys
from importlib.metadata import entry_points

import click

from outbox import collector, distribution
from outbox.cli.context import Context, fail_clearly

#: Each subcommand as ``module:object``, imported when it runs or a help lists it: a relay's
#: start (``outbox relay``) does not pay for the audit's, the console's or the demo's imports.
COMMANDS = {
    "audit": "outbox.cli.audit:group",
    "demo": "outbox.cli.demo:command",
    "jobs": "outbox.cli.jobs:group",
    "migrate": "outbox.cli.migrate:command",
    "prune": "outbox.cli.audit:prune_command",
    "status": "outbox.cli.status:command",
    "ui": "outbox.cli.ui:command",
}


@functools.cache
def _plugins() -> dict[str, str]:
    """Commands of other packages (the relay's), found by entry point so that outbox never
    imports them unless asked."""
    return {entry.name: entry.value for entry in entry_points(group="outbox.commands")}


class _Commands(click.Group):
    """The command group, loading each subcommand on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*COMMANDS, *_plugins()})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name) or _plugins().get(cmd_name)
        if target is None:
            return None
        module, _, name = target.partition(":")
        with collector.paused():
            command: click.Command = getattr(importlib.import_module(module), name)
        return command


@click.group(
    cls=_Commands,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
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


def main() -> None:
    with fail_clearly():
        cli.main(prog_name="outbox", standalone_mode=True)
    sys.exit(0)  # pragma: no cover - cli.main exits itself
