"""``outbox migrate``: bring the database to this version's schema."""

from __future__ import annotations

import click
import sqlalchemy as sa

from outbox import migrate as migrations
from outbox.cli.context import Context, clear_errors


@click.command("migrate")
@click.option("--revision", default="head", show_default=True, help="Alembic revision to reach.")
@click.option("--check", is_flag=True, help="Change nothing; exit 1 unless the schema is at head.")
@click.pass_obj
@clear_errors
def command(ctx: Context, revision: str, check: bool) -> None:
    """Create or upgrade outbox's tables (safe to run twice, or from many processes at once).

    Concurrent runs wait for each other on an advisory lock; the later ones find
    nothing left to do. Outbox keeps its own version table, outbox_alembic_version,
    beside any Alembic history of your application.
    """
    engine = ctx.engine(poolclass=sa.NullPool)
    try:
        if check:
            with engine.connect() as connection:
                migrations.check_at_head(connection)
            click.echo(f"schema is at head ({migrations.head()})")
            return
        before, after = migrations.upgrade(engine, revision)
    finally:
        engine.dispose()
    if before == after:
        click.echo(f"schema already at {after}")
    else:
        click.echo(f"schema upgraded from {before or 'nothing'} to {after}")
