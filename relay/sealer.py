"""The sealer: one relay at a time extends the digest chain (G7).

Every relay runs one; the holder of a session-level advisory lock seals, the others only try
to take the lock now and then. When the sealing relay dies its session ends, the lock is
free, and the next relay to try carries the chain on from where it stopped.
"""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa
import structlog

from outbox.audit.seal import SEALER_LOCK, seal_all
from outbox.errors import OutboxError

from . import metrics
from .leader import Leadership
from .log import first_line
from .service import Service

#: How often a relay that does not seal tries to take over.
TAKEOVER_EVERY = 5.0
#: How long a relay waits before it tries again to seal a chain it cannot carry on (a seal
#: forged behind the triggers): the error is logged each time, and an operator must act.
BROKEN_CHAIN_RETRY = 60.0

log = structlog.get_logger("outbox.relay")


class Sealer(Service):
    name = "sealer"
    failure = "sealing failed; will try again"

    def __init__(self, engine: sa.Engine, every: timedelta, relay: str) -> None:
        super().__init__(every.total_seconds(), first_wait=0.0)
        self._relay = relay
        self._leadership = Leadership(engine, SEALER_LOCK)

    @property
    def leading(self) -> bool:
        return self._leadership.connection is not None

    def tick(self) -> float:
        try:
            if leader := self._lead():
                sealed = seal_all(leader)
                if sealed:
                    metrics.SEALED_ROWS.inc(sum(s.row_count for s in sealed))
                    log.debug(
                        "sealed history", seals=len(sealed), last=sealed[-1].id,
                        rows=sum(s.row_count for s in sealed),
                    )  # fmt: skip
        except OutboxError as exc:
            # The chain cannot be carried on as it is (docs/howto/audit-roles.md): say so,
            # keep the relay running its jobs, and let another relay look in a while.
            log.error("the digest chain cannot be carried on", error=first_line(exc))
            self._leadership.resign()
            return BROKEN_CHAIN_RETRY
        return self.every if self.leading else TAKEOVER_EVERY

    def recover(self) -> None:
        self._leadership.resign()

    def finish(self) -> None:
        self._leadership.resign()

    def _lead(self) -> sa.Connection | None:
        was_leading = self.leading
        leader = self._leadership.take()
        if leader is not None and not was_leading:
            log.info("this relay seals the history now", relay=self._relay)
        return leader
