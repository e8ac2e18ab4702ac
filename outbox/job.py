"""What a handler receives: one attempt of one job."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any
from uuid import UUID


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Job:
    """One attempt at one job, as handed to its handler."""

    uuid: UUID
    type: str
    queue: str
    key: str | None
    payload: dict[str, Any]
    #: 1 on the first attempt; every claim increments it.
    attempt: int
    max_attempts: int
    enqueued_at: datetime
    #: The key the enqueuer gave, or the job's uuid: the same on every attempt,
    #: so pass it to payment providers and other services that deduplicate (G3).
    idempotency_key: str

    @property
    def is_last_attempt(self) -> bool:
        return self.attempt >= self.max_attempts
