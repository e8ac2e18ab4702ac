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
    # Unpacked by position (the order of the statement's SELECT list): the per-row cost of a
    # claim in the relay is mostly here, and names cost a lookup each.
    return [
        Job(
            uuid=uuid,
            type=type_,
            queue=queue,
            key=key,
            payload=payload,
            attempt=attempt,
            max_attempts=most or max_attempts.get(type_) or default_max_attempts,
            enqueued_at=enqueued_at,
            idempotency_key=idempotency_key or str(uuid),
        )
        for uuid, type_, queue, key, idempotency_key, payload, attempt, most, enqueued_at in rows
    ]


def next_run_at(connection: sa.Connection, queues: Sequence[str]) -> datetime | None:
    """When the earliest scheduled job of ``queues`` falls due, if any is scheduled."""
    when: datetime | None = connection.execute(NEXT_RUN_AT, {"queues": list(queues)}).scalar()
    connection.commit()
    return when
