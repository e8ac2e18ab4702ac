"""Before a relay starts: refuse a connection that cannot keep a session (PgBouncer's
transaction pooling), instead of running degraded.

A relay keeps state in its database sessions: its startup options (the
``idle_in_transaction_session_timeout`` that ends the transaction of a relay stopped
mid-job, so that its fence does not hold forever: G2, G3), LISTEN for wake-ups, and
session advisory locks that elect one sealer (G7) and one gauge leader. A pooler in
transaction pooling hands each transaction to whichever server session is free, so
none of that holds: the options are refused (PgBouncer: ``unsupported startup
parameter: options``) or, where told to ignore them, silently dropped; notifications
go to sessions nobody listens on; two relays can both hold the sealer's lock.

:func:`check` connects as a relay does and asks three questions, in this order:

1. Are the startup options accepted? (PgBouncer refuses ``options`` in every pool mode.)
2. Did they take effect? (``ignore_startup_parameters = options`` connects without them.)
3. Is a session setting made in one transaction there in the next, and unseen by another
   connection? (A loss or a leak means transactions are spread over server sessions.)

On a direct connection this costs two connections and three statements, a few
milliseconds. Applications may enqueue through transaction pooling; only relays need
this (docs/howto/pgbouncer.md).
"""

from __future__ import annotations

import secrets
from typing import Any

import psycopg

from outbox.database import libpq_dsn
from outbox.errors import ConfigurationError
from outbox.settings import Settings

from .log import first_line

#: Rounds of the third question where a pooler is seen (its backend pid is its own):
#: a pooler may give the same server session back a few times in a row.
POOLED_ROUNDS = 4
CONNECT_TIMEOUT = 5

# Question 2 and the first half of question 3, in one statement: the settings the startup
# options asked for, as the session has them, and a marker (the custom setting
# outbox.preflight) set for the session, not LOCAL to the transaction.
MARK = """
SELECT current_user,
       pg_backend_pid(),
       set_config('outbox.preflight', %(token)s, false),
       (SELECT coalesce(json_object_agg(name, setting), '{}')
          FROM pg_settings WHERE name = ANY(%(names)s))
"""
# Question 3: whose session is this, and does it hold the marker?
LOOK = "SELECT pg_backend_pid(), current_setting('outbox.preflight', true)"

WHAT_TO_DO = (
    "A relay needs one database session for the whole life of each of its connections "
    "(startup options, LISTEN wake-ups, the advisory locks that elect one sealer). "
    "Point the relay's DSN (OUTBOX_DSN or --dsn) at PostgreSQL itself; applications can "
    "go on enqueueing through PgBouncer's transaction pooling. "
    "See docs/howto/pgbouncer.md."
)


class UnfitConnection(ConfigurationError):
    """The relay's DSN leads to a connection that cannot keep a relay's session state."""


class OptionsRefused(UnfitConnection):
    """The server, or a pooler in front of it, refused the relay's startup options."""


class OptionsIgnored(UnfitConnection):
    """The relay connected, but its startup options did not take effect."""


class SessionNotKept(UnfitConnection):
    """Session state does not last from one transaction to the next (transaction pooling)."""


def startup_settings(settings: Settings) -> dict[str, str]:
    """What every relay connection sets in its startup packet, as ``pg_settings`` shows it."""
    lease_ms = int(settings.lease.total_seconds() * 1000)
    # A relay stopped mid-transaction (SIGSTOP, a hung handler) must not hold its fence
    # forever: PostgreSQL ends the session, and the rescuer can act.
    return {"idle_in_transaction_session_timeout": str(lease_ms)}


def session_options(settings: Settings) -> str:
    """The libpq ``options`` of a relay connection: ``-c name=value`` for each startup setting."""
    return " ".join(f"-c {name}={value}" for name, value in startup_settings(settings).items())


def check(dsn: str, settings: Settings) -> None:
    """Raise an :class:`UnfitConnection` unless ``dsn`` gives a relay sessions of its own.

    A database that cannot be reached at all raises psycopg's ``OperationalError``.
    """
    conninfo = libpq_dsn(dsn)
    asked = startup_settings(settings)
    token = secrets.token_hex(8)
    with _connect(conninfo, session_options(settings)) as first:
        role, first_pid, _, found = _row(first, MARK, {"token": token, "names": list(asked)})
        _check_applied(asked, found, role)
        pooled = first.info.backend_pid != first_pid
        with _connect(conninfo, session_options(settings)) as second:
            for _ in range(POOLED_ROUNDS if pooled else 1):
                pid, marker = _row(second, LOOK)
                if marker == token or pid == first_pid:
                    raise SessionNotKept(_not_kept("was seen by another connection"))
                pid, marker = _row(first, LOOK)
                if marker != token or pid != first_pid:
                    raise SessionNotKept(_not_kept("was gone in its next transaction"))


def _connect(conninfo: str, options: str) -> psycopg.Connection[Any]:
    """A connection made as the relay makes its own; autocommit, so that each statement is
    a transaction of its own (a transaction pooler may move each to another session)."""
    common: dict[str, Any] = {
        "application_name": "outbox relay preflight",
        "connect_timeout": CONNECT_TIMEOUT,
        "autocommit": True,
        "prepare_threshold": None,
    }
    try:
        return psycopg.connect(conninfo, options=options, **common)
    except psycopg.OperationalError as refused:
        try:  # the same connection without options: if it works, they were the trouble
            psycopg.connect(conninfo, **common).close()
        except psycopg.OperationalError:
            raise refused from None
        raise OptionsRefused(
            f"the relay cannot start: the database connection refused its startup options "
            f"({options!r}) with {_reason(refused)!r}. PgBouncer refuses them in every pool mode, "
            f"and a relay cannot run through its transaction pooling anyway. {WHAT_TO_DO}"
        ) from None


def _check_applied(asked: dict[str, str], found: dict[str, str], role: str) -> None:
    for name, value in asked.items():
        if found.get(name) != value:
            raise OptionsIgnored(
                f"the relay cannot start: its startup options asked for {name}={value} and the "
                f"session has {name}={found.get(name)}: something between the relay and "
                "PostgreSQL dropped them, as PgBouncer does where ignore_startup_parameters "
                "lists options. Without it, a relay stopped in the middle of a transaction "
                "(SIGSTOP, a hung handler) holds its jobs out of the rescuer's reach for as "
                f"long as it stays stopped. {WHAT_TO_DO} Behind PgBouncer in session "
                "pooling, set it for the relay's role instead: "
                f"ALTER ROLE \"{role}\" SET {name} = '{value}ms'."
            )


def _not_kept(what: str) -> str:
    return (
        f"the relay cannot start: a setting made in one transaction of a session {what}, "
        "so this connection's transactions run in whichever server session is free: "
        "PgBouncer in transaction pooling (pool_mode = transaction) does this. A relay "
        "there would miss its wake-ups, and two relays could both hold the sealer's "
        f"advisory lock. {WHAT_TO_DO}"
    )


def _row(
    connection: psycopg.Connection[Any], sql: str, params: dict[str, Any] | None = None
) -> tuple[Any, ...]:
    row = connection.execute(sql, params, prepare=False).fetchone()
    assert row is not None  # each statement returns one row
    return tuple(row)


def _reason(error: psycopg.Error) -> str:
    """The server's (or the pooler's) own words, without libpq's preamble."""
    return first_line(error).rsplit("FATAL:", 1)[-1].strip()
