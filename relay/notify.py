"""The listener: LISTEN on a connection of its own, to wake an idle relay at once.

Waiting for notifications on a query connection would stall the queries behind it,
so this connection does nothing else. Lost, it is made again; polling covers the gap.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Collection

import psycopg
import structlog

from relay import metrics
from relay.log import first_line

CHANNEL = "outbox_jobs"

log = structlog.get_logger("outbox.relay")


class Listener:
    def __init__(
        self,
        dsn: str,
        queues: Collection[str],
        wake: threading.Event,
        *,
        application_name: str = "outbox relay",
    ) -> None:
        self._dsn = dsn
        self._application_name = application_name[:63]
        self._queues = set(queues)
        self._wake = wake
        self._stopping = threading.Event()
        self._connected_before = False
        self.connected = threading.Event()

    def run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                self._listen()
            except psycopg.Error as exc:
                self.connected.clear()
                metrics.DATABASE_ERRORS.labels("listen").inc()
                failures += 1
                delay = min(5.0, 0.2 * 2**failures) * random.uniform(0.5, 1.0)
                log.warning(
                    "LISTEN connection lost; reconnecting",
                    error=first_line(exc),
                    retry_in=round(delay, 2),
                )
                self._wake.set()  # notifications may have been missed: look now
                self._stopping.wait(delay)
            else:
                failures = 0

    def stop(self) -> None:
        self._stopping.set()

    def _listen(self) -> None:
        with psycopg.connect(
            self._dsn,
            autocommit=True,
            connect_timeout=5,
            application_name=self._application_name,
        ) as connection:
            connection.execute(f"LISTEN {CHANNEL}")
            if self._connected_before:
                metrics.RECONNECTS.inc()
            self._connected_before = True
            self.connected.set()
            self._wake.set()
            while not self._stopping.is_set():
                for note in connection.notifies(timeout=0.5):
                    if note.payload in self._queues:
                        self._wake.set()
                connection.execute("SELECT 1")  # notices a dead connection between waits
