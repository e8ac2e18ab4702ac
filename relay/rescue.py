"""The rescuer: expired leases go back to pending, or to dead once attempts are spent."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa
import structlog

from . import metrics
from .service import Service
from .sql import queries

RESCUE = sa.text(queries["rescue_expired"])
BATCH = 500

log = structlog.get_logger("outbox.relay")


def rescue_expired(connection: sa.Connection, limit: int = BATCH) -> int:
    """One pass; returns how many jobs it rescued (at most ``limit``)."""
    with connection.begin():
        result = connection.execute(RESCUE, {"limit": limit})
    return sum(1 for event in result.scalars() if event == "rescued")


class Rescuer(Service):
    """Every relay runs one: the statement skips rows another relay is rescuing."""

    name = "rescue"
    failure = "rescue pass failed; will try again"

    def __init__(self, engine: sa.Engine, every: timedelta) -> None:
        super().__init__(every.total_seconds())
        self._engine = engine

    def tick(self) -> None:
        self.rescue_all()

    def rescue_all(self) -> int:
        rescued = 0
        with self._engine.connect() as connection:
            while True:
                rows = rescue_expired(connection)
                rescued += rows
                if rows < BATCH:
                    break
        if rescued:
            metrics.RESCUED.inc(rescued)
            log.info("rescued jobs with expired leases", jobs=rescued)
        return rescued
