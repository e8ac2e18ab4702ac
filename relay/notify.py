"""The listener: LISTEN on a connection of its own, to wake an idle relay at once.

Waiting for notifications on a query connection would stall the queries behind it,
so this connection does nothing else. Lost, it is made again; polling covers the gap.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Collection

import psycopg
import structlog

from . import metrics
from .service import Service

CHANNEL = "outbox_jobs"

log = structlog.get_logger("outbox.relay")


class Listener(Service):
    name = "listen"
    failure = "LISTEN connection lost; reconnecting"

    def __init__(
        self,
        dsn: str,
        queues: Collection[str],
        wake: threading.Event,
        *,
        application_name: str = "outbox relay",
        on_lost: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(0.0, first_wait=0.0)
        self._dsn = dsn
        self._application_name = application_name[:63]
        self._queues = set(queues)
        self._wake = wake
        self._on_lost = on_lost
        self._connected_before = False
        self.connected = threading.Event()

    def retry_in(self, failures: int) -> float:
        return float(min(5.0, 0.2 * 2**failures) * random.uniform(0.5, 1.0))

    def recover(self) -> None:
        self.connected.clear()
        if self._on_lost is not None:
            self._on_lost()  # the server may have restarted, and other connections with it
        self._wake.set()  # notifications may have been missed: look now

    def tick(self) -> None:
        """Listen until stopped; a lost connection raises, and the next pass makes another."""
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
            while not self.stopping:
                for note in connection.notifies(timeout=0.5):
                    if note.payload in self._queues:
                        self._wake.set()
                connection.execute("SELECT 1")  # notices a dead connection between waits
