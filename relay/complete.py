"""Completing jobs: fence, then record outcomes, many jobs per transaction (G3, G6, G7).

Two ways in. Handlers without a session run first; their outcomes queue up here and
the :class:`Completer` writes them in batches. Handlers with a session run inside
the completion transaction itself (:func:`run_in_transaction`), each in a savepoint,
after the fence, so the writes of a job this relay no longer owns never happen.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
import structlog
import tenacity
from psycopg.types.numeric import Int4

from outbox.errors import RetryLater
from outbox.job import Job
from outbox.registry import Handler, Registry

from . import execute, metrics
from .execute import Outcome
from .inflight import InFlight
from .log import first_line
from .sql import queries

FENCE = sa.text(queries["fence"])
BATCH = sa.text(queries["complete_batch"])
FLUSH_AT = 500  # outcomes per completion transaction, at most
#: Errors one outcome's values can cause (PostgreSQL refusing a value, or encoding it
#: failing): a batch that meets one is written in halves to find the outcome at fault.
DATA_FAULTS = (sa.exc.DataError, sa.exc.IntegrityError, ValueError, TypeError)
#: The largest statement_timeout and idle_in_transaction_session_timeout PostgreSQL takes (ms).
MAX_TIMEOUT_MS = 2**31 - 1

log = structlog.get_logger("outbox.relay")


def fence(connection: sa.Connection, relay: str, jobs: Sequence[Job]) -> set[Any]:
    """Lock the jobs still leased to ``relay`` at their attempt; return their uuids."""
    rows = connection.execute(
        FENCE,
        {
            "uuid": [j.uuid for j in jobs],
            "attempt": [Int4(j.attempt) for j in jobs],
            "relay": relay,
        },
    )
    return {row[0] for row in rows}


def record(
    connection: sa.Connection, relay: str, outcomes: Sequence[Outcome], registry: Registry
) -> set[Any]:
    """Write outcomes in one statement (sql/complete.sql, `complete_batch`): delete the
    succeeded jobs, retry or bury the failed, put the postponed back (``RetryLater``), each
    only while still leased to ``relay`` at the attempt that ran. Returns the uuids written;
    the others' leases were lost (G3). A postponement refused because the job asked too often
    is turned into the failure it was recorded as, so logs and metrics say ``dead``."""
    if not outcomes:
        return set()
    done = [o for o in outcomes if o.succeeded]
    failed = [o for o in outcomes if o.error is not None]
    later = [o for o in outcomes if o.postponed]
    rows = connection.execute(
        BATCH,
        {
            "done_uuid": [o.job.uuid for o in done],
            # int4, as the column is: a list of small ints would arrive as smallint[] and be
            # cast again for every row the statement reads.
            "done_attempt": [Int4(o.job.attempt) for o in done],
            "done_ms": [o.duration_ms for o in done],
            "done_reason": [o.note for o in done],
            "failed_uuid": [o.job.uuid for o in failed],
            "failed_attempt": [Int4(o.job.attempt) for o in failed],
            "failed_ms": [o.duration_ms for o in failed],
            "relay": relay,
            **_failures(failed, registry),
            **_postponements(later),
        },
    ).all()
    refused = {uuid for uuid, no in rows if no}
    for outcome in later:
        if outcome.job.uuid in refused:
            outcome.error = {"type": "outbox.RetryLater", "message": _refused(), "traceback": None}
            outcome.permanent = True
    return {uuid for uuid, _ in rows if uuid is not None}


def _refused() -> str:
    """Why a job that asked to retry later once too often ended dead (last_error, history)."""
    return (
        f"asked to retry later more than {RetryLater.LIMIT} times, the most a job may: "
        "it ends dead so that it cannot loop for ever"
    )


def _postponements(later: Sequence[Outcome]) -> dict[str, Any]:
    """The jobs whose handler raised RetryLater: when each runs again, and the limit (G6)."""
    return {
        "later_uuid": [o.job.uuid for o in later],
        "later_attempt": [Int4(o.job.attempt) for o in later],
        "later_in": [o.later for o in later],
        "later_ms": [o.duration_ms for o in later],
        "later_reason": [o.note or str(RetryLater(o.later or 0.0)) for o in later],
        "later_prefix": RetryLater.REASON,
        "later_limit": RetryLater.LIMIT,
        "later_refused": _refused(),
    }


def _failures(failed: Sequence[Outcome], registry: Registry) -> dict[str, list[Any]]:
    """Error, retry delay and whether each failed job is dead now (G6)."""
    dead = [o.dead for o in failed]
    return {
        "error": [json.dumps(o.error) for o in failed],
        "retry_in": [
            0.0 if is_dead else _backoff(registry.get(o.job.type), o.job.attempt)
            for o, is_dead in zip(failed, dead, strict=True)
        ],
        "dead": dead,
    }


def _backoff(handler: Handler | None, attempt: int) -> float:
    return handler.backoff(attempt) if handler is not None else 0.0


def complete(
    connection: sa.Connection, relay: str, outcomes: Sequence[Outcome], registry: Registry
) -> list[Outcome]:
    """Fence and record ``outcomes`` in one statement and commit; return those whose lease
    was lost. On an autocommit connection this is a single round trip."""
    owned = record(connection, relay, outcomes, registry)
    connection.commit()
    return [o for o in outcomes if o.job.uuid not in owned]


def run_in_transaction(
    connection: sa.Connection,
    relay: str,
    work: Sequence[tuple[Handler, Job]],
    registry: Registry,
    timeout_ms: int,
    running: Callable[[Job | None], None] | None = None,
) -> tuple[list[Outcome], list[Job], list[tuple[Handler, Job]]]:
    """Run session handlers inside their completion transaction, one savepoint each.

    ``running(job)`` is called before each handler runs (its timeout starts there), and
    ``running(None)`` after the last; an exception from it abandons the transaction.

    Returns the outcomes recorded, the jobs skipped because their lease was lost, and
    the jobs deferred because they met a deadlock: the locks they wait for may be held
    by this very transaction (taken by an earlier job of the batch), so they run again
    after it commits, each in a transaction of its own (see :func:`run_alone`).
    """
    deferred: list[tuple[Handler, Job]] = []
    with connection.begin():
        # Handlers may think between statements for as long as their timeout, not just the
        # lease that bounds the relay's own short transactions.
        # PostgreSQL takes at most MAX_TIMEOUT_MS for either: a longer timeout (30 days) is
        # set to that, which is as good as none for a transaction.
        statement_ms = min(int(timeout_ms), MAX_TIMEOUT_MS)
        idle_ms = min(int(timeout_ms) + 5000, MAX_TIMEOUT_MS)
        connection.exec_driver_sql(f"SET LOCAL statement_timeout = {statement_ms}")
        connection.exec_driver_sql(f"SET LOCAL idle_in_transaction_session_timeout = {idle_ms}")
        owned = fence(connection, relay, [job for _, job in work])
        outcomes = []
        for handler, job in work:
            if job.uuid not in owned:
                continue
            if running is not None:
                running(job)
            outcome = _run_in_savepoint(connection, handler, job)
            if outcome.transient and len(work) > 1:
                deferred.append((handler, job))
            else:
                outcomes.append(outcome)
        if running is not None:
            running(None)
        record(connection, relay, outcomes, registry)
    return outcomes, [job for _, job in work if job.uuid not in owned], deferred


def _run_in_savepoint(connection: sa.Connection, handler: Handler, job: Job) -> Outcome:
    """Run one session handler in a savepoint: commit its writes with the batch, or undo them."""
    from sqlalchemy.orm import Session  # the ORM's import waits for a handler that takes one

    with Session(bind=connection, join_transaction_mode="create_savepoint") as session:
        outcome = execute.run(handler, job, session)
        if outcome.succeeded:
            try:
                session.commit()  # releases the savepoint; the outer transaction commits it
            except Exception as exc:  # a flush that fails: a constraint, a timeout
                session.rollback()
                return execute.failed(handler, job, exc, outcome.duration_ms)
        else:
            session.rollback()
    return outcome


class Completer:
    """Writes outcomes of session-less handlers in batches, retrying through faults."""

    name = "completer"

    def __init__(
        self,
        engine: sa.Engine,
        relay: str,
        registry: Registry,
        inflight: InFlight,
    ) -> None:
        self._engine = engine
        self._relay = relay
        self._registry = registry
        self._inflight = inflight
        self._queue: queue.SimpleQueue[Outcome] = queue.SimpleQueue()
        self._stopping = threading.Event()

    def submit(self, outcome: Outcome) -> None:
        self._queue.put(outcome)

    def run(self) -> None:
        while not (self._stopping.is_set() and self._queue.empty()):
            batch = self._take()
            if batch:
                self._flush(batch)

    def stop(self) -> None:
        """Finish writing what was submitted, then return from run()."""
        self._stopping.set()

    def _take(self) -> list[Outcome]:
        """The next outcome and whatever queued behind it: no waiting for a batch to fill,
        since under load outcomes pile up while the previous batch is being written."""
        try:
            batch = [self._queue.get(timeout=0.1)]
        except queue.Empty:
            return []
        while len(batch) < FLUSH_AT:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _flush(self, batch: list[Outcome]) -> bool:
        """Write ``batch``; False when the database could not be reached (after retries)."""
        try:
            with metrics.COMPLETION_DURATION.time():
                lost = self._write(batch)
        except Exception as exc:
            if len(batch) > 1 and isinstance(exc, DATA_FAULTS):
                # A value PostgreSQL refuses fails the whole statement: each half is written
                # on its own, so that only the outcome at fault is abandoned and its
                # batch-mates are not run again. Errors that every half would meet (the
                # database gone, read-only or missing a column) are not split.
                half = len(batch) // 2
                if self._flush(batch[:half]):
                    return self._flush(batch[half:])
                self._abandon(batch[half:], "the database could not be reached")
                return False
            self._abandon(batch, first_line(exc))
            return not isinstance(exc, sa.exc.OperationalError)
        for outcome in lost:
            log.warning("lease lost before completion", **_fields(outcome.job))
        metrics.FENCING_REJECTIONS.inc(len(lost))
        lost_ids = {o.job.uuid for o in lost}
        self._inflight.finished([o for o in batch if o.job.uuid not in lost_ids], lost)
        return True

    def _abandon(self, batch: list[Outcome], error: str) -> None:
        # The jobs keep their leases and are rescued, then run again (G2); external
        # effects are deduplicated by the job's idempotency key (G3).
        # The first line only: the rest is the statement and its parameters (payloads).
        log.error("completion abandoned", jobs=len(batch), error=error)
        self._inflight.finished([], batch)

    @tenacity.retry(
        retry=tenacity.retry_if_exception_type(sa.exc.OperationalError),
        wait=tenacity.wait_exponential_jitter(multiplier=0.1, max=5),
        stop=tenacity.stop_after_delay(60),
        reraise=True,
        before_sleep=lambda state: _retrying(state),
    )
    def _write(self, batch: list[Outcome]) -> list[Outcome]:
        with self._engine.connect() as connection:
            return complete(connection, self._relay, batch, self._registry)


def _retrying(state: tenacity.RetryCallState) -> None:
    metrics.DATABASE_ERRORS.labels("complete").inc()
    error = state.outcome.exception() if state.outcome else None
    log.warning(
        "completion retrying after a database error", error=first_line(error) if error else None
    )


def _fields(job: Job) -> dict[str, Any]:
    return {"uuid": str(job.uuid), "type": job.type, "key": job.key, "attempt": job.attempt}
