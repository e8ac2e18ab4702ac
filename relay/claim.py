"""Claiming: ready jobs become this relay's, in batches, with a lease (see sql/claim.sql)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

import sqlalchemy as sa

from outbox.job import Job
from relay.sql import queries

CLAIM = sa.text(queries["claim_batch"])
NEXT_RUN_AT = sa.text(queries["next_run_at"])


def claim_batch(
    connection: sa.Connection,
    *,
    queues: Sequence[str],
    limit: int,
    lease: timedelta,
    relay: str,
    default_max_attempts: int,
    max_attempts: dict[str, int | None],
) -> list[Job]:
    """Claim up to ``limit`` jobs and commit at once; the jobs come back in claim order.

    ``max_attempts`` holds the registry's per-type defaults, for jobs enqueued without one.
    """
    rows = connection.execute(
        CLAIM, {"queues": list(queues), "limit": limit, "lease": lease, "relay": relay}
    ).all()
    connection.commit()
    return [
        Job(
            uuid=row.uuid,
            type=row.type,
            queue=row.queue,
            key=row.key,
            payload=row.payload,
            attempt=row.attempt,
            max_attempts=row.max_attempts or max_attempts.get(row.type) or default_max_attempts,
            enqueued_at=row.enqueued_at,
            idempotency_key=row.idempotency_key or str(row.uuid),
        )
        for row in rows
    ]


def next_run_at(connection: sa.Connection, queues: Sequence[str]) -> datetime | None:
    """When the earliest scheduled job of ``queues`` falls due, if any is scheduled."""
    when: datetime | None = connection.execute(NEXT_RUN_AT, {"queues": list(queues)}).scalar()
    connection.commit()
    return when
