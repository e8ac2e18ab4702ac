"""Bring a database to the schema this code needs, safely from many processes at once."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from outbox import locks
from outbox.errors import MigrationError

VERSION_TABLE = "outbox_alembic_version"
APP_VERSION_TABLE = "alembic_version"
REVISION_PREFIX = "outbox_"
#: Session-level advisory lock held while migrating: (class, id) as two int4 keys.
MIGRATION_LOCK = locks.MIGRATION


def migrations_dir() -> Path:
    """The Alembic script directory; add ``versions/`` under it to your own
    ``version_locations`` to include outbox in your application's history."""
    return Path(str(resources.files("outbox.migrations")))


def alembic_config(connection: sa.Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head() -> str:
    revision = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert revision is not None
    return revision


def current(connection: sa.Connection) -> str | None:
    """outbox's schema revision: from its own version table, or else from the application's
    Alembic history where outbox's migrations were included as a branch."""
    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision() or included(connection)


def included(connection: sa.Connection) -> str | None:
    """outbox's revision in the application's own ``alembic_version``, if it is there."""
    if not sa.inspect(connection).has_table(APP_VERSION_TABLE):
        return None
    heads = MigrationContext.configure(connection).get_current_heads()
    ours = [h for h in heads if h.startswith(REVISION_PREFIX)]
    return ours[0] if ours else None


def upgrade(engine: sa.Engine, revision: str = "head") -> tuple[str | None, str | None]:
    """Upgrade to ``revision``; returns the revisions before and after.

    Concurrent callers wait on an advisory lock and then find nothing left to do.
    """
    with engine.connect() as connection:
        connection.execute(sa.text("SELECT pg_advisory_lock(:c, :i)"), _lock_params())
        connection.commit()
        try:
            before = current(connection)
            connection.commit()
            if before is not None and before == included(connection):
                if before == head() and revision == "head":
                    return before, before
                raise MigrationError(
                    f"outbox's migrations are part of your application's Alembic history "
                    f"(alembic_version holds {before}): upgrade with `alembic upgrade heads`"
                )
            try:
                command.upgrade(alembic_config(connection), revision)
            except Exception as exc:
                connection.rollback()
                raise MigrationError(f"migration to {revision} failed: {exc}") from exc
            connection.commit()
            return before, current(connection)
        finally:
            connection.rollback()
            connection.execute(sa.text("SELECT pg_advisory_unlock(:c, :i)"), _lock_params())
            connection.commit()


def _lock_params() -> dict[str, int]:
    return {"c": MIGRATION_LOCK[0], "i": MIGRATION_LOCK[1]}


def check_at_head(connection: sa.Connection) -> None:
    """Refuse to run against a schema older (or newer) than this code."""
    found, wanted = current(connection), head()
    if found != wanted:
        raise MigrationError(
            f"the database schema is at {found or 'nothing'}, this code needs {wanted}: "
            "run `outbox migrate`"
        )
