"""The COPY path of :func:`outbox.enqueue_many`, for batches where rows outweigh round trips.

Inside a savepoint on the caller's connection and transaction: ``enqueue_bulk_prepare``
(key locks, idempotency keys, wake-up), then a binary COPY of the fresh jobs, whose
`enqueued` history rows the database appends (the trigger outbox_jobs_enqueued, G7).
COPY inserts heap rows in batches, and payloads are encoded while
the server inserts the rows before them, on the other core. A payload refused half-way
aborts the COPY; rolling back to the savepoint leaves the caller's transaction as it
was, with nothing written (G8). See docs/explanation/enqueue.md for the measurements.

No statement here is prepared (``prepare=False``): behind a pooler such as PgBouncer the
next transaction may run in a server session that does not hold it, and the one plan a
batch of 500 jobs or more needs is a small part of its cost.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Iterator, Mapping
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import psycopg
from psycopg.copy import AsyncQueuedLibpqWriter, QueuedLibpqWriter
from psycopg.types.string import BytesBinaryDumper

from outbox import validate
from outbox.errors import InvalidJob
from outbox.sql import pyformat, queries

#: From this many jobs on, enqueue_many copies instead of inserting.
COPY_THRESHOLD = 500
PREPARE = pyformat(queries["enqueue_bulk_prepare"])
COPY_JOBS = queries["enqueue_bulk_copy_jobs"]
SAVEPOINT = "SAVEPOINT outbox_enqueue_many"
RELEASE = "RELEASE SAVEPOINT outbox_enqueue_many"
ROLLBACK = "ROLLBACK TO SAVEPOINT outbox_enqueue_many"
_JOB_TYPES = ["uuid", "text", "text", "text", "text", "bytea", "int2", "timestamptz", "int4"]
_JSONB_VERSION = b"\x01"  # jsonb's binary input format: a version byte, then the JSON text


@dataclasses.dataclass(slots=True)
class Columns:
    """A checked batch, one list per column, in batch order; payloads not yet encoded."""

    uuid: list[UUID]
    type: list[str]
    queue: list[str]
    key: list[str | None]
    idempotency_key: list[str | None]
    payload: list[Mapping[str, Any]]
    priority: list[int]
    run_at: list[datetime | None]
    delay: list[timedelta | None]
    max_attempts: list[int | None]

    def encoded(self, i: int, limit: int) -> str:
        """Job ``i``'s payload as JSON text, or the reason it is refused."""
        try:
            job_type = self.type[i]
            noun = "message" if job_type.startswith(validate.PUBLISH_PREFIX) else "payload"
            return validate.encode_payload(self.payload[i], limit, noun)
        except InvalidJob as exc:
            raise refused(exc, i, len(self.uuid), self.type[i]) from None


def refused(exc: InvalidJob, i: int, n: int, job_type: object) -> InvalidJob:
    """The same refusal, saying which job of a batch it was (which message, and to which
    destination, for a publish job)."""
    if n == 1:
        return exc
    if isinstance(job_type, str) and job_type.startswith(validate.PUBLISH_PREFIX):
        return message_refused(exc, i, n, job_type.removeprefix(validate.PUBLISH_PREFIX))
    return type(exc)(f"job {i} of {n} ({job_type!r}): {exc}")


def message_refused(exc: InvalidJob, i: int, n: int, destination: object) -> InvalidJob:
    """The same refusal, saying which message of a batch it was and its destination."""
    if n == 1:
        return exc
    return type(exc)(f"message {i} of {n} (destination {destination!r}): {exc}")


def prepare_params(batch: Columns, lock_class: int, retention: timedelta) -> dict[str, Any]:
    keyed = [i for i, k in enumerate(batch.idempotency_key) if k is not None]
    return {
        "lock_class": lock_class,
        "key": sorted({k for k in batch.key if k is not None}),
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


def job_rows(
    batch: Columns, now: datetime, skip: dict[int, UUID], limit: int
) -> Iterator[tuple[Any, ...]]:
    """COPY rows of the fresh jobs, encoding each payload as it goes."""
    columns = zip(
        batch.uuid, batch.type, batch.queue, batch.key, batch.idempotency_key,
        batch.priority, batch.run_at, batch.delay, batch.max_attempts, strict=True,
    )  # fmt: skip
    for i, (uuid, job_type, queue, key, idem, priority, run_at, delay, attempts) in enumerate(
        columns
    ):
        if skip and i in skip:
            continue
        due = run_at or (now + delay if delay is not None else now)
        payload = _JSONB_VERSION + batch.encoded(i, limit).encode()
        yield (uuid, job_type, queue, key, idem, payload, priority, due, attempts)


@contextlib.contextmanager
def _savepoint(cursor: psycopg.Cursor[Any]) -> Iterator[None]:
    cursor.execute(SAVEPOINT, prepare=False)
    try:
        yield
    except BaseException:
        with contextlib.suppress(psycopg.Error):
            cursor.execute(ROLLBACK, prepare=False)
        raise
    cursor.execute(RELEASE, prepare=False)


@contextlib.asynccontextmanager
async def _savepoint_async(cursor: psycopg.AsyncCursor[Any]) -> AsyncIterator[None]:
    await cursor.execute(SAVEPOINT, prepare=False)
    try:
        yield
    except BaseException:
        with contextlib.suppress(psycopg.Error):
            await cursor.execute(ROLLBACK, prepare=False)
        raise
    await cursor.execute(RELEASE, prepare=False)


def run(
    connection: psycopg.Connection[Any], batch: Columns, params: dict[str, Any], limit: int
) -> dict[int, UUID]:
    with connection.cursor() as cursor, _savepoint(cursor):
        _plain_bytes(cursor)
        cursor.execute(PREPARE, _without_private(params), prepare=False)
        now, skip = duplicates(params, cursor.fetchall())
        # The queued writer sends from a thread of its own, so the server inserts while
        # Python encodes and formats the next rows.
        with cursor.copy(COPY_JOBS, writer=QueuedLibpqWriter(cursor)) as copy:
            copy.set_types(_JOB_TYPES)
            for row in job_rows(batch, now, skip, limit):
                copy.write_row(row)
    return skip


async def run_async(
    connection: psycopg.AsyncConnection[Any], batch: Columns, params: dict[str, Any], limit: int
) -> dict[int, UUID]:
    async with connection.cursor() as cursor, _savepoint_async(cursor):
        _plain_bytes(cursor)
        await cursor.execute(PREPARE, _without_private(params), prepare=False)
        now, skip = duplicates(params, await cursor.fetchall())
        async with cursor.copy(COPY_JOBS, writer=AsyncQueuedLibpqWriter(cursor)) as copy:
            copy.set_types(_JOB_TYPES)
            for row in job_rows(batch, now, skip, limit):
                await copy.write_row(row)
    return skip


def _plain_bytes(cursor: psycopg.Cursor[Any] | psycopg.AsyncCursor[Any]) -> None:
    """Dump bytea columns with psycopg's own (C) bytes dumper: looked up by oid, bytea
    otherwise finds the DB-API ``Binary`` wrapper's, written in Python."""
    cursor.adapters.register_dumper(bytes, BytesBinaryDumper)


def _without_private(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if not k.startswith("_")}
