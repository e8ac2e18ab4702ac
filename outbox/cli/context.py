"""What every subcommand shares: settings, the database, and clear failures."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import click
import sqlalchemy as sa

from outbox import migrate
from outbox.database import (
    Server,
    create_engine,
    database_name,
    find_server,
    sqlalchemy_url,
    with_database,
)
from outbox.errors import OutboxError
from outbox.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])


@dataclasses.dataclass
class Context:
    settings: Settings
    #: ``--database``: this database on the server found, in place of the DSN's own.
    database: str | None = None

    @classmethod
    def create(cls, dsn: str | None, database: str | None = None) -> Context:
        try:
            settings = Settings.load(dsn=dsn)
            if settings.dsn:
                sqlalchemy_url(settings.dsn)  # refuse a malformed DSN before any work
            return cls(settings, None if database is None else database_name(database))
        except OutboxError as exc:
            raise click.UsageError(str(exc)) from None

    @functools.cached_property
    def server(self) -> Server:
        """The server by the one rule (``find_server``), said on stderr when not configured."""
        server = find_server(self.settings)
        if server.source != "dsn":
            click.echo(
                f"No OUTBOX_DSN: using database {self.database or 'postgres'} on {server.where}",
                err=True,
            )
        return server

    @functools.cached_property
    def dsn(self) -> str:
        if self.database is None:
            return self.server.dsn
        return with_database(self.server.dsn, self.database)

    def engine(self, **options: Any) -> sa.Engine:
        return create_engine(self.dsn, **options)


@contextlib.contextmanager
def fail_clearly() -> Iterator[None]:
    """Turn errors a user can meet into one line on stderr and exit status 1."""
    try:
        yield
    except OutboxError as exc:
        raise click.ClickException(str(exc)) from None
    except sa.exc.OperationalError as exc:
        reason = str(exc.orig or exc).strip().splitlines()[0]
        raise click.ClickException(f"cannot reach the database: {reason}") from None


def clear_errors(func: F) -> F:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with fail_clearly():
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


@contextlib.contextmanager
def migrated_connection(ctx: Context) -> Iterator[sa.Connection]:
    """A connection to a database at the schema this code needs."""
    engine = ctx.engine(poolclass=sa.NullPool)
    try:
        with engine.connect() as connection:
            migrate.check_at_head(connection)
            connection.rollback()
            yield connection
    finally:
        engine.dispose()
