"""The sealer: one relay at a time extends the digest chain (G7).

Every relay runs one; the holder of a session-level advisory lock seals, the others only try
to take the lock now and then. When the sealing relay dies its session ends, the lock is
free, and the next relay to try carries the chain on from where it stopped.
"""

from __future__ import annotations

import threading
from datetime import timedelta

import sqlalchemy as sa
import structlog

from outbox.seal import SEALER_LOCK, seal_all
from relay import metrics

#: How often a relay that does not seal tries to take over.
TAKEOVER_EVERY = 5.0

log = structlog.get_logger("outbox.relay")


class Sealer:
    def __init__(self, engine: sa.Engine, every: timedelta, relay: str) -> None:
        self._engine = engine
        self._every = every.total_seconds()
        self._relay = relay
        self._stopping = threading.Event()
        self._leader: sa.Connection | None = None

    @property
    def leading(self) -> bool:
        return self._leader is not None

    def run(self) -> None:
        wait = 0.0
        while not self._stopping.wait(wait):
            try:
                if self._lead():
                    sealed = seal_all(self._leader)  # type: ignore[arg-type]
                    if sealed:
                        metrics.SEALED_ROWS.inc(sum(s.row_count for s in sealed))
                        log.debug(
                            "sealed history", seals=len(sealed), last=sealed[-1].id,
                            rows=sum(s.row_count for s in sealed),
                        )  # fmt: skip
                wait = self._every if self.leading else TAKEOVER_EVERY
            except sa.exc.DBAPIError as exc:
                metrics.DATABASE_ERRORS.labels("sealer").inc()
                log.warning("sealing failed; will try again", error=str(exc).splitlines()[0])
                self._resign()
                wait = self._every
        self._resign()

    def stop(self) -> None:
        self._stopping.set()

    def _lead(self) -> bool:
        if self._leader is not None:
            return True
        connection = self._engine.connect()
        try:
            got = connection.execute(
                sa.text("SELECT pg_try_advisory_lock(:c, :i)"),
                {"c": SEALER_LOCK[0], "i": SEALER_LOCK[1]},
            ).scalar()
            connection.commit()
        except BaseException:
            connection.invalidate()
            connection.close()
            raise
        if not got:
            connection.close()
            return False
        self._leader = connection
        log.info("this relay seals the history now", relay=self._relay)
        return True

    def _resign(self) -> None:
        if self._leader is None:
            return
        self._leader.invalidate()  # the lock ends with the session, never back to the pool
        self._leader.close()
        self._leader = None
