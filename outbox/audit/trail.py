"""Audit queries: the history of jobs by uuid, key, type, actor or time (G7)."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import sqlalchemy as sa

from outbox.errors import InvalidJob
from outbox.sql import queries

TRAIL = sa.text(queries["trail"])
COLUMNS = (
    "at", "job_uuid", "event", "type", "queue", "key", "attempt", "relay", "actor", "reason",
    "error_type", "error_message", "duration_ms", "run_at", "xid", "id",
)  # fmt: skip


def trail(
    connection: sa.Connection,
    *,
    job: UUID | None = None,
    key: str | None = None,
    type: str | None = None,
    actor: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 10_000,
) -> list[dict[str, Any]]:
    """History rows matching every filter given, oldest first, at most ``limit``."""
    for name, moment in (("since", since), ("until", until)):
        if moment is not None and moment.tzinfo is None:
            raise InvalidJob(f"{name} must carry a time zone (for example 2026-11-27T00:00Z)")
    if since is not None and until is not None and until <= since:
        raise InvalidJob("until must be later than since")
    if limit < 1:
        raise InvalidJob(f"limit must be at least 1, not {limit}")
    rows = connection.execute(
        TRAIL,
        {"job": job, "key": key, "type": type, "actor": actor, "since": since,
         "until": until, "limit": limit},
    ).mappings()  # fmt: skip
    return [{name: row[name] for name in COLUMNS} for row in rows]
