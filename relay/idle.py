"""The idle mark: enqueue wakes relays with NOTIFY only while one of them is idle.

NOTIFY makes every transaction of the server that sends one commit one at a time, which more
than doubled the application's transaction at 4 clients (docs/benchmarks.md), and a relay
with work in hand claims again without being told. So an idle relay says so: it holds the
IDLE advisory lock shared, on a connection of its own, and enqueue sends NOTIFY only while
some relay holds it (relay_idle in outbox/sql/enqueue.sql).

A transaction that looked before the mark was taken did not notify, and may commit after the
relay's last claim. Each such transaction holds GATE shared until it ends, so the relay, as it
takes the mark, takes GATE exclusively, waiting for those transactions up to GATE_WAIT; once it
has it, it claims once more, and only then sleeps. If some are still open, it notes which
(pg_locks), and claims again every few milliseconds (or when a notification comes) until
they have ended. Enqueue never waits for either lock: it only tries them, and notifies when
GATE is taken or waited for.

Lost, the mark is taken again at the next idle claim; until then the poll interval covers.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import structlog

from outbox.sql import pyformat

from .service import database_fault
from .sql import queries

SESSION = pyformat(queries["idle_session"])
ENTER = queries["idle_enter"]
GATE_HOLDERS = queries["idle_gate_holders"]
GATE_WAITED = pyformat(queries["idle_gate_waited"])
LEAVE = queries["idle_leave"]
HOLDERS = queries["idle_holders"]
GATE_WAIT = "5ms"  # how long the relay waits for GATE as it takes the mark (lock_timeout)
RETRY_FIRST = 0.002  # seconds before the first claim again while the mark is not confirmed
#: Most seconds between claims while a transaction that looked before the mark is open. Such a
#: transaction's job is found within this of its commit; so at most 20 claims a second, while it
#: lasts.
RETRY_MOST = 0.05
#: Seconds the mark may be refused (another session holds IDLE exclusively) before a warning.
REFUSED_WARN = 30.0
BUSY_CLAIMS = 8  # claims in a row that found jobs before the mark is given up

log = structlog.get_logger("outbox.relay")
Conn = psycopg.Connection[tuple[Any, ...]]


class Step(enum.Enum):
    """What the producer does after a claim that found nothing (:meth:`IdleMark.enter`)."""

    #: Newly confirmed: claim once more (it finds what was enqueued without a NOTIFY), then sleep.
    CLAIM_AGAIN = "claim again"
    #: Confirmed before: sleep until a notification or the poll interval.
    SLEEP = "sleep"
    #: Not confirmed: claim again after :meth:`IdleMark.retry_in`.
    RETRY = "retry"


class IdleMark:
    """The producer's mark; only the producer thread calls it, but for :meth:`suspect`."""

    def __init__(self, dsn: str, *, application_name: str, options: str) -> None:
        self._dsn = dsn
        self._application_name = application_name[:63]
        self._options = options
        self._connection: Conn | None = None
        #: IDLE is held: every enqueue statement from now on notifies.
        self.held = False
        #: And every transaction that looked before it was taken has ended since.
        self.confirmed = False
        self._waiting: list[str] = []  # those transactions, while some are open
        self._tries = 0  # enter() in a row that did not confirm
        self._found = 0  # claims in a row that found jobs
        self._suspect = threading.Event()
        self._refused_since: float | None = None  # the mark refused since, without a break
        self._warned = False

    def enter(self) -> Step:
        """Mark this relay idle, after a claim that found nothing."""
        self._found = 0
        if self._suspect.is_set():
            self._suspect.clear()
            self._drop()
        if self.confirmed:
            return Step.SLEEP
        try:
            connection = self._connect()
            if self.held:
                passed = bool(_value(connection, GATE_WAITED, {"waiting": self._waiting}))
            else:
                passed = self._take(connection)
        except psycopg.Error as exc:
            database_fault("idle", "idle mark failed; polling meanwhile", exc)
            self._drop()
            passed = False
        self.confirmed = passed
        if passed:
            self._tries, self._waiting = 0, []
            return Step.CLAIM_AGAIN
        self._tries += 1
        return Step.RETRY

    def retry_in(self, longest: Callable[[], float]) -> float:
        """Seconds to the next claim after :attr:`Step.RETRY`: a few milliseconds while a
        transaction that looked before the mark is still open (it ends soon, as a rule),
        growing to ``longest()`` (the relay's idle wait) when the mark itself cannot be taken."""
        most = RETRY_MOST if self.held else longest()
        return float(min(most, RETRY_FIRST * 2 ** min(self._tries, 16)))

    def claimed(self) -> None:
        """A claim came back full: after BUSY_CLAIMS in a row (a backlog), enqueue need not
        wake this relay."""
        self._found += 1
        if self._found >= BUSY_CLAIMS and self.held:
            self.leave()

    def ran_dry(self) -> bool:
        """A claim found jobs, fewer than it asked for: it read the queue dry. True when the
        producer may sleep at once, as after an empty claim: the mark is confirmed, so every
        job enqueued since notifies. False: claim again (an empty claim then calls
        :meth:`enter`). A trickle, a job a claim, keeps the mark at no cost per job."""
        self._found = 0
        return self.confirmed and not self._suspect.is_set()

    def leave(self) -> None:
        """Give the mark up."""
        if self.held and self._connection is not None:
            try:
                _value(self._connection, LEAVE)
            except psycopg.Error as exc:
                database_fault("idle", "giving up the idle mark failed", exc)
                self._drop()
        self._forget()

    def check(self) -> None:
        """After a wait that no notification ended: is the mark's connection still there?"""
        if self._connection is None or not self.held:
            return
        try:
            _value(self._connection, "SELECT 1")
        except psycopg.Error as exc:
            database_fault("idle", "idle mark lost; taking it again", exc)
            self._drop()

    def suspect(self) -> None:
        """The database may have been restarted (another thread lost its connection): check
        the mark at the next idle claim. Thread-safe."""
        self._suspect.set()

    def close(self) -> None:
        self._drop()

    def _take(self, connection: Conn) -> bool:
        """Take IDLE and wait for GATE; True once every earlier enqueue has ended."""
        try:
            taken = _value(connection, ENTER)
        except psycopg.errors.LockNotAvailable:  # GATE_WAIT ran out, IDLE held all the same
            taken = False
        self.held = taken is not None
        self._note_refusal(connection, refused=taken is None)
        if taken is not False:
            return bool(taken)
        self._waiting = list(_value(connection, GATE_HOLDERS) or ())
        return not self._waiting  # they may all have ended meanwhile

    def _note_refusal(self, connection: Conn, *, refused: bool) -> None:
        """Warn once when the mark has been refused for REFUSED_WARN seconds: an enqueue
        cancelled between trying IDLE and releasing it left IDLE to its session (its own
        enqueues then wake no relay until it disconnects)."""
        if not refused:
            self._refused_since, self._warned = None, False
            return
        now = time.monotonic()
        if self._refused_since is None:
            self._refused_since = now
        elif now - self._refused_since >= REFUSED_WARN and not self._warned:
            self._warned = True
            holders = connection.execute(HOLDERS).fetchall()
            log.warning(
                "the idle mark is held exclusively by another session: this relay polls, "
                "and that session's enqueues wake no relay until it disconnects",
                sessions=[{"pid": pid, "application_name": name} for pid, name in holders],
            )

    def _connect(self) -> Conn:
        if self._connection is None or self._connection.closed:
            connection: Conn = psycopg.connect(
                self._dsn,
                autocommit=True,
                connect_timeout=5,
                application_name=self._application_name,
                options=self._options,
            )
            try:
                _value(connection, SESSION, {"gate_wait": GATE_WAIT})
            except psycopg.Error:
                connection.close()
                raise
            self._connection = connection
        return self._connection

    def _forget(self) -> None:
        self.held = self.confirmed = False
        self._waiting, self._tries = [], 0

    def _drop(self) -> None:
        """Forget the mark and close its connection: PostgreSQL releases the lock with it."""
        self._forget()
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()


def _value(connection: Conn, statement: str, params: dict[str, Any] | None = None) -> Any:
    row = connection.execute(statement, params).fetchone()
    return None if row is None else row[0]
