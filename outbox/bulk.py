"""The COPY path of :func:`outbox.enqueue_many`, for batches where rows outweigh round trips.

Three steps on the caller's connection and transaction: ``enqueue_bulk_prepare``
(key locks, idempotency keys, wake-up), then a binary COPY of the fresh jobs and
one of their history rows. COPY inserts heap rows in batches, which halves the
server's work per job against INSERT ... SELECT (see docs/explanation/enqueue.md).
"""

from __future__ import annotations

import dataclasses
import re
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import psycopg
from psycopg.copy import AsyncQueuedLibpqWriter, QueuedLibpqWriter

from outbox.sql import queries

#: From this many jobs on, enqueue_many copies instead of inserting.
COPY_THRESHOLD = 500
# The query files use SQLAlchemy's :name binds; psycopg takes %(name)s.
PREPARE = re.sub(r"(?<![:\w]):(\w+)", r"%(\1)s", queries["enqueue_bulk_prepare"].replace("%", "%%"))
_JOB_TYPES = ["uuid", "text", "text", "text", "text", "bytea", "int2", "timestamptz", "int4"]
_HISTORY_TYPES = ["uuid", "text", "text", "text", "text", "int4", "bytea", "timestamptz"]
_JSONB_VERSION = b"\x01"  # jsonb's binary input format: a version byte, then the JSON text


@dataclasses.dataclass(slots=True)
class Columns:
    """A validated batch, one list per column, in batch order."""

    uuid: list[UUID]
    type: list[str]
    queue: list[str]
    key: list[str | None]
    idempotency_key: list[str | None]
    payload: list[str]
    priority: list[int]
    run_at: list[datetime | None]
    delay: list[timedelta | None]
    max_attempts: list[int | None]


def prepare_params(batch: Columns, lock_class: int, retention: timedelta) -> dict[str, Any]:
    keyed = [i for i, k in enumerate(batch.idempotency_key) if k is not None]
    return {
        "lock_class": lock_class,
        "key": [k for k in batch.key if k is not None],
        "idempotency_key": [batch.idempotency_key[i] for i in keyed],
        "uuid": [batch.uuid[i] for i in keyed],
        "retention": retention,
        "queues": sorted(set(batch.queue)),
        "_keyed": keyed,
    }


def duplicates(
    params: dict[str, Any], rows: list[tuple[Any, ...]]
) -> tuple[datetime, dict[int, UUID]]:
    """The transaction's now() and, by batch index, the existing job of each duplicate."""
    keyed: list[int] = params["_keyed"]
    now: datetime = rows[0][0]
    return now, {keyed[row[3] - 1]: row[4] for row in rows if row[3] is not None}


def copy_rows(
    batch: Columns, now: datetime, skip: dict[int, UUID]
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    jobs: list[tuple[Any, ...]] = []
    history: list[tuple[Any, ...]] = []
    columns = zip(
        batch.uuid, batch.type, batch.queue, batch.key, batch.idempotency_key, batch.payload,
        batch.priority, batch.run_at, batch.delay, batch.max_attempts, strict=True,
    )  # fmt: skip
    for i, (uuid, job_type, queue, key, idem, text, priority, run_at, delay, attempts) in enumerate(
        columns
    ):
        if skip and i in skip:
            continue
        due = run_at or (now + delay if delay is not None else now)
        payload = _JSONB_VERSION + text.encode()
        jobs.append((uuid, job_type, queue, key, idem, payload, priority, due, attempts))
        history.append((uuid, "enqueued", job_type, queue, key, 0, payload, due))
    return jobs, history


def run(
    connection: psycopg.Connection[Any], batch: Columns, params: dict[str, Any]
) -> dict[int, UUID]:
    with connection.cursor() as cursor:
        cursor.execute(PREPARE, _without_private(params))
        now, skip = duplicates(params, cursor.fetchall())
        jobs, history = copy_rows(batch, now, skip)
        if jobs:
            # The queued writer sends from a thread of its own, so the server inserts
            # while Python formats the next rows.
            copy_jobs = queries["enqueue_bulk_copy_jobs"]
            with cursor.copy(copy_jobs, writer=QueuedLibpqWriter(cursor)) as copy:
                copy.set_types(_JOB_TYPES)
                for row in jobs:
                    copy.write_row(row)
            copy_history = queries["enqueue_bulk_copy_history"]
            with cursor.copy(copy_history, writer=QueuedLibpqWriter(cursor)) as copy:
                copy.set_types(_HISTORY_TYPES)
                for row in history:
                    copy.write_row(row)
    return skip


async def run_async(
    connection: psycopg.AsyncConnection[Any], batch: Columns, params: dict[str, Any]
) -> dict[int, UUID]:
    async with connection.cursor() as cursor:
        await cursor.execute(PREPARE, _without_private(params))
        now, skip = duplicates(params, await cursor.fetchall())
        jobs, history = copy_rows(batch, now, skip)
        if jobs:
            copy_jobs = queries["enqueue_bulk_copy_jobs"]
            async with cursor.copy(copy_jobs, writer=AsyncQueuedLibpqWriter(cursor)) as copy:
                copy.set_types(_JOB_TYPES)
                for row in jobs:
                    await copy.write_row(row)
            copy_history = queries["enqueue_bulk_copy_history"]
            async with cursor.copy(copy_history, writer=AsyncQueuedLibpqWriter(cursor)) as copy:
                copy.set_types(_HISTORY_TYPES)
                for row in history:
                    await copy.write_row(row)
    return skip


def _without_private(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if not k.startswith("_")}
