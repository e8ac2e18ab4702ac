"""Alembic environment for outbox's own version table.

``outbox migrate`` passes an open connection in ``config.attributes["connection"]``
(it holds the migration advisory lock on it). Run by hand, ``alembic`` connects
to ``sqlalchemy.url`` instead.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import context

from outbox.schema import metadata

VERSION_TABLE = "outbox_alembic_version"


def include_object(
    obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    # Only outbox's tables: the database usually holds the application's too.
    if type_ == "table":
        return bool(name and name.startswith("outbox_")) and name != VERSION_TABLE
    return True


def run(connection: sa.Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        include_object=include_object,
        transaction_per_migration=False,
    )
    with context.begin_transaction():
        context.run_migrations()


config = context.config
given = config.attributes.get("connection")
if given is not None:
    run(given)
else:
    engine = sa.create_engine(config.get_main_option("sqlalchemy.url") or "", poolclass=sa.NullPool)
    with engine.connect() as connection:
        run(connection)
    engine.dispose()
