"""One shape for the relay's background chores: the rescuer, the sealer, table upkeep, the
listener and the heartbeat each run in a thread of their own, a pass at a time, and stop the
same way. A database fault in a pass is met in one place: counted, logged, and the chore
carries on after a wait, since every fault here is one a later pass may not meet.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterable
from typing import Protocol

import psycopg
import sqlalchemy as sa
import structlog

from . import metrics
from .log import first_line

log = structlog.get_logger("outbox.relay")

#: What a pass may meet and survive: a fault of the database or of the way to it.
DATABASE_FAULTS = (sa.exc.DBAPIError, psycopg.Error)


def database_fault(operation: str, message: str, exc: BaseException, **fields: object) -> None:
    """Count a database fault under ``operation`` (outbox_relay_database_errors_total) and log
    ``message`` with the fault's first line: every such fault in the relay is reported so."""
    metrics.DATABASE_ERRORS.labels(operation).inc()
    log.warning(message, error=first_line(exc), **fields)


class Service:
    """A chore that runs :meth:`tick` in a loop until :meth:`stop`.

    ``tick()`` returns how long to wait before the next pass (None: ``every``). A database
    fault is reported by :func:`database_fault` under ``name``, :meth:`recover` is called, and
    the next pass comes :meth:`retry_in` seconds later. :meth:`finish` runs once the loop ends.
    """

    #: The ``operation`` label of its database faults, and its thread's name.
    name = "service"
    #: What its log says of a failed pass.
    failure = "a relay chore failed; will try again"

    def __init__(self, every: float, *, first_wait: float | None = None) -> None:
        self.every = every
        self._first_wait = every if first_wait is None else first_wait
        self._stopping = threading.Event()
        #: Set by stop() and nudge(): the loop looks again at when its next pass is due.
        self.__nudged = threading.Event()
        self.__soon = math.inf  # monotonic: a pass asked for by nudge()

    def run(self) -> None:
        due = time.monotonic() + self._first_wait
        failures = 0
        while True:
            self.__nudged.wait(max(0.0, min(due, self.__soon) - time.monotonic()))
            if self._stopping.is_set():
                break
            self.__nudged.clear()
            now = time.monotonic()
            if now < min(due, self.__soon):
                continue  # nudged for later than now: wait until then
            # A nudged pass leaves the regular ones where they were: it may have come too
            # early for what it was asked for, and the next regular pass then takes it.
            regular = now >= due
            self.__soon = math.inf
            try:
                next_wait = self.tick()
            except DATABASE_FAULTS as exc:
                failures += 1
                wait = self.retry_in(failures)
                database_fault(self.name, self.failure, exc, retry_in=round(wait, 2))
                self.recover()
                regular = True
            else:
                failures = 0
                wait = self.every if next_wait is None else next_wait
            if regular:
                due = time.monotonic() + wait
        self.finish()

    def stop(self) -> None:
        self._stopping.set()
        self.__nudged.set()

    def nudge(self, within: float) -> None:
        """Run a pass ``within`` seconds, if the next one is not due sooner (any thread)."""
        self.__soon = min(self.__soon, time.monotonic() + within)
        self.__nudged.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def tick(self) -> float | None:
        raise NotImplementedError

    def retry_in(self, failures: int) -> float:
        """Seconds before the pass after the ``failures``-th fault in a row."""
        return self.every

    def recover(self) -> None:
        """After a fault: give up what the fault may have broken (a leader's connection)."""

    def finish(self) -> None:
        """After the last pass."""


class Chore(Protocol):
    """What a relay runs in a thread of its own: a Service, the completer, the HTTP server."""

    name: str

    def run(self) -> None: ...

    def stop(self) -> None: ...


def start(services: Iterable[Chore], threads: list[threading.Thread]) -> None:
    """Start each chore in a daemon thread named after it; ``threads`` gets them."""
    for service in services:
        thread = threading.Thread(target=service.run, name=f"outbox-{service.name}", daemon=True)
        thread.start()
        threads.append(thread)
