"""Bring a database to the schema this code needs, safely from many processes at once."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa

from outbox import locks
from outbox.errors import MigrationError

if TYPE_CHECKING:
    # Alembic is imported where a migration runs, not by every command and relay that only
    # checks the schema's revision (it costs a relay's start-up about 70 ms).
    from alembic.config import Config

VERSION_TABLE = "outbox_alembic_version"
APP_VERSION_TABLE = "alembic_version"
REVISION_PREFIX = "outbox_"
#: The revision this code needs: the head of migrations/versions
#: (tests/unit/test_migration_head.py holds the two together).
HEAD = "outbox_0012"
#: Session-level advisory lock held while migrating: (class, id) as two int4 keys.
MIGRATION_LOCK = locks.MIGRATION


def migrations_dir() -> Path:
    """The Alembic script directory; add ``versions/`` under it to your own
    ``version_locations`` to include outbox in your application's history."""
    return Path(str(resources.files("outbox.migrations")))


def alembic_config(connection: sa.Connection | None = None) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head() -> str:
    return HEAD


#: Which version tables exist, where Alembic would look for them (the search path).
VERSION_TABLES = sa.text(
    f"SELECT to_regclass('{VERSION_TABLE}') IS NOT NULL, "
    f"to_regclass('{APP_VERSION_TABLE}') IS NOT NULL"
)


def current(connection: sa.Connection) -> str | None:
    """outbox's schema revision: from its own version table, or else from the application's
    Alembic history where outbox's migrations were included as a branch."""
    own, app = connection.execute(VERSION_TABLES).one()
    if own:
        found = connection.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()
        if found is not None:
            return str(found)
    return _included(connection) if app else None


def included(connection: sa.Connection) -> str | None:
    """outbox's revision in the application's own ``alembic_version``, if it is there."""
    (app,) = connection.execute(
        sa.text(f"SELECT to_regclass('{APP_VERSION_TABLE}') IS NOT NULL")
    ).one()
    return _included(connection) if app else None


def _included(connection: sa.Connection) -> str | None:
    heads = (
        connection.execute(
            sa.text(f"SELECT version_num FROM {APP_VERSION_TABLE} WHERE version_num LIKE :prefix"),
            {"prefix": REVISION_PREFIX + "%"},
        )
        .scalars()
        .all()
    )
    return str(heads[0]) if heads else None


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
            from alembic import command

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
