"""The rescuer: expired leases go back to pending, or to dead once attempts are spent."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa
import structlog

from outbox.registry import Registry
from relay import metrics
from relay.service import Service
from relay.sql import queries

RESCUE = sa.text(queries["rescue_expired"])
BATCH = 500

log = structlog.get_logger("outbox.relay")


def rescue_expired(
    connection: sa.Connection, registry: Registry, default_max_attempts: int, limit: int = BATCH
) -> int:
    """One pass; returns how many jobs it rescued (at most ``limit``)."""
    handlers = list(registry)
    with connection.begin():
        result = connection.execute(
            RESCUE,
            {
                "type": [h.type for h in handlers],
                "max": [h.max_attempts for h in handlers],
                "default_max": default_max_attempts,
                "limit": limit,
            },
        )
    return sum(1 for event in result.scalars() if event == "rescued")


class Rescuer(Service):
    """Every relay runs one: the statement skips rows another relay is rescuing."""

    name = "rescue"
    failure = "rescue pass failed; will try again"

    def __init__(
        self, engine: sa.Engine, registry: Registry, default_max_attempts: int, every: timedelta
    ) -> None:
        super().__init__(every.total_seconds())
        self._engine = engine
        self._registry = registry
        self._default_max_attempts = default_max_attempts

    def tick(self) -> None:
        self.rescue_all()

    def rescue_all(self) -> int:
        rescued = 0
        with self._engine.connect() as connection:
            while True:
                rows = rescue_expired(connection, self._registry, self._default_max_attempts)
                rescued += rows
                if rows < BATCH:
                    break
        if rescued:
            metrics.RESCUED.inc(rescued)
            log.info("rescued jobs with expired leases", jobs=rescued)
        return rescued
