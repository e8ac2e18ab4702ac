"""Leases: the heartbeat renews them and enforces timeouts; shutdown gives back what never ran.

A claimed job carries a lease (G2). While its handler runs within its timeout, the heartbeat
renews the lease every third of its length, so only a relay that died, hung or was cut off
lets it expire, and the rescuer gives the job back. A handler past its timeout is given up
on: its job fails alone, the jobs queued behind it move to other threads, and a session
group it holds is broken (relay/dispatch.py) (G6).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Sequence

import sqlalchemy as sa
import structlog

from outbox import distribution
from outbox.job import Job
from outbox.settings import Settings

from . import execute
from .complete import Completer
from .dispatch import Dispatcher
from .execute import Outcome
from .inflight import InFlight
from .service import Service, database_fault
from .sql import queries

EXTEND = sa.text(queries["extend_leases"])
RELEASE = sa.text(queries["release"])
ANNOUNCE = sa.text(queries["relay_heartbeat"])
LEAVE = sa.text(queries["relay_gone"])
VERSION = distribution.version()
EVERY = 0.2  # seconds between looks for handlers past their timeouts


class Heartbeat(Service):
    name = "heartbeat"

    def __init__(
        self,
        engine: sa.Engine,
        relay: str,
        settings: Settings,
        queues: Sequence[str],
        inflight: InFlight,
        dispatcher: Dispatcher,
        completer: Completer,
        log: structlog.typing.FilteringBoundLogger,
        types: Sequence[str] = (),
    ) -> None:
        super().__init__(EVERY)
        self._engine = engine
        self._relay = relay
        self._lease = settings.lease
        self._renew_every = settings.lease.total_seconds() / 3
        self._next_renewal = time.monotonic() + self._renew_every
        self._queues = list(queues)
        self._types = sorted(types)  # announced: the types this relay claims
        self._concurrency = settings.concurrency
        self._inflight = inflight
        self._dispatcher = dispatcher
        self._completer = completer
        self._log = log

    def tick(self) -> float | None:
        self.expire_timeouts()
        if time.monotonic() >= self._next_renewal:
            self._next_renewal = time.monotonic() + self._renew_every
            self.extend()
            self.announce()
        return None

    def expire_timeouts(self) -> None:
        """A handler past its timeout fails alone; its neighbours run on elsewhere (G6)."""
        now = time.monotonic()
        expired, broken = self._inflight.expire(now)
        for group, backend_pid in broken:
            self._dispatcher.break_group(group, backend_pid)
        for running in expired:
            if running.group is None:
                self._dispatcher.move_waiting(running)
            timeout = self._dispatcher.timeout(running.handler)
            error = TimeoutError(f"handler ran past its timeout of {timeout}s")
            started = running.started or now
            self._completer.submit(
                Outcome(running.job, (now - started) * 1000, execute.describe(error))
            )

    def extend(self) -> None:
        live = self._inflight.leased(time.monotonic())
        if not live:
            return
        try:
            with self._engine.begin() as connection:
                connection.execute(
                    EXTEND, {"uuid": live, "relay": self._relay, "lease": self._lease}
                )
        except sa.exc.DBAPIError as exc:
            database_fault("heartbeat", "lease heartbeat failed", exc)

    def announce(self) -> None:
        """Tell status and metrics this relay is alive, for one more lease, and which job
        types it runs."""
        params = {
            "relay": self._relay,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "queues": self._queues,
            "types": self._types,
            "concurrency": self._concurrency,
            "version": VERSION,
            "ttl": self._lease,
        }
        try:
            with self._engine.begin() as connection:
                connection.execute(ANNOUNCE, params)
        except sa.exc.DBAPIError as exc:
            database_fault("heartbeat", "relay heartbeat failed", exc)


def release(connection: sa.Connection, relay: str, jobs: Sequence[Job]) -> None:
    """Give back claimed jobs that never started (shutdown)."""
    with connection.begin():
        connection.execute(RELEASE, {"uuid": [j.uuid for j in jobs], "relay": relay})


def leave(engine: sa.Engine, relay: str) -> None:
    """A relay that stops cleanly says so (status and metrics stop listing it)."""
    try:
        with engine.begin() as connection:
            connection.execute(LEAVE, {"relay": relay})
    except sa.exc.DBAPIError:
        pass  # its row expires by itself
