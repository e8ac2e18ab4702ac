"""Running one handler on one job, and what came of it."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import traceback
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from outbox.errors import PermanentFailure, RetryLater
from outbox.job import Job
from outbox.publish.target import Delivery
from outbox.registry import ErrorRedactor, Handler, redact_messages
from outbox.storable import storable

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

TRACEBACK_LIMIT = 8_000  # characters kept of a traceback (G6 keeps every error, bounded)
MESSAGE_LIMIT = 2_000  # characters kept of a message
NOTE_LIMIT = 500  # characters kept of a delivery's note


@dataclasses.dataclass(slots=True)
class Outcome:
    """What one attempt came to: success, a request to run again later, or an error and
    whether it may be retried."""

    job: Job
    duration_ms: float
    error: dict[str, Any] | None = None
    #: The job can never succeed (unknown type, invalid payload): dead without retrying.
    permanent: bool = False
    #: A deadlock or serialization failure: running it again, alone, may well succeed.
    transient: bool = False
    #: Seconds after which the handler asked to run the job again (``outbox.RetryLater``):
    #: not done, not failed.
    later: float | None = None
    #: What history's row of this outcome says besides the event: a publish's Delivery (the
    #: broker's answer) when it succeeded, the request and its reason when postponed.
    note: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.error is None and self.later is None

    @property
    def postponed(self) -> bool:
        """The handler raised ``RetryLater``, and the job was not ended for asking too often."""
        return self.error is None and self.later is not None

    @property
    def dead(self) -> bool:
        """Failed for good: it can never succeed, or this was its last attempt (G6)."""
        return self.error is not None and (
            self.permanent or self.job.attempt >= self.job.max_attempts
        )

    @property
    def label(self) -> str:
        """succeeded, postponed (RetryLater), retried (failed, will run again) or dead, as
        the metrics count it."""
        if self.succeeded:
            return "succeeded"
        if self.postponed:
            return "postponed"
        return "dead" if self.dead else "retried"


def describe(exc: BaseException) -> dict[str, Any]:
    """An exception as history keeps it: type, message and a bounded traceback.

    Never raises, whatever the exception does when printed (G6 keeps every error): one whose
    ``str()`` fails is kept by its ``repr()``, one that cannot be printed at all by its type.
    The text is made storable: a NUL or a lone surrogate would make PostgreSQL refuse the
    whole completion batch, so each is written as its escape instead.
    """
    kind = type(exc)
    name = f"{kind.__module__}.{kind.__qualname__}"
    return {"type": name, "message": _message(exc), "traceback": _traceback(exc)}


def _message(exc: BaseException) -> str:
    """What ``str(exc)`` says, bounded; the type's name when it says nothing."""
    try:
        text = str.__str__(str(exc)) or _kind(exc)
    except BaseException as failed:  # a broken __str__: keep what can be kept
        try:
            text = f"{str.__str__(repr(exc))} (its str() raised {_kind(failed)})"
        except BaseException:
            text = f"{_kind(exc)} (cannot be printed: its str() and repr() raise)"
    return storable(text, MESSAGE_LIMIT)


def _kind(exc: BaseException) -> str:
    return type(exc).__qualname__


def _traceback(exc: BaseException) -> str:
    try:
        text = "".join(traceback.format_exception(exc))
    except BaseException:  # pragma: no cover - traceback prints what cannot be printed
        text = f"{_kind(exc)} (its traceback cannot be printed)\n"
    return _bounded(storable(text), TRACEBACK_LIMIT)


def _bounded(text: str, limit: int) -> str:
    """``text`` cut in the middle to about ``limit`` characters: the head keeps where it
    began (the first frames), the tail where it ended (the last frames and the error)."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n... ({len(text) - 2 * half} characters cut) ...\n{text[-half:]}"


def unknown_type(job: Job) -> Outcome:
    error = {
        "type": "outbox.UnknownJobType",
        "message": f"no handler is registered for job type {job.type!r} on this relay",
        "traceback": None,
    }
    return Outcome(job, 0.0, error, permanent=True)


def run(handler: Handler, job: Job, session: Session | None = None) -> Outcome:
    """Call the handler; any exception becomes a failed outcome of this job, never escapes;
    ``outbox.RetryLater`` becomes a postponed one (a session handler's writes are then
    rolled back by the caller, as for a failure: the job is not done).

    Whatever it is: ``KeyboardInterrupt``, ``SystemExit`` or another ``BaseException`` raised
    by a handler fails its own attempt with the error kept (G6). Escaping, it would take the
    relay's handler task with it, and with it the attempts of every job of a session group.
    A session handler's pending writes are flushed here, so that a write the database refuses
    is this handler's error, described and redacted like any other.
    """
    started = time.perf_counter()
    try:
        args: tuple[Any, ...] = (job, session) if handler.takes_session else (job,)
        result = handler.func(*args)
        if handler.is_async or asyncio.iscoroutine(result):
            result = asyncio.run(result)
        if session is not None:
            session.flush()
    except RetryLater as later:  # not done: again after the delay it asked for
        return Outcome(job, _ms(started), later=later.seconds, note=_note(later))
    except BaseException as exc:  # sys.exit(), KeyboardInterrupt: the job's failure (G6)
        return failed(handler, job, exc, _ms(started))
    # Only a publish's Delivery is kept: other return values mean nothing to outbox.
    note = _note(result) if isinstance(result, Delivery) else None
    return Outcome(job, _ms(started), note=note)


def _note(said: Delivery | RetryLater) -> str:
    """A delivery's or a later retry's words as history keeps them: storable, bounded."""
    try:
        text = str(said)
    except Exception:  # a subclass's __str__ that fails: its kind is kept
        text = type(said).__qualname__
    return storable(text, NOTE_LIMIT)


def run_batch(handler: Handler, jobs: Sequence[Job]) -> list[Outcome]:
    """Call a batch handler (``Handler.batch``) on ``jobs``: one outcome each, as
    :func:`run` would give it; the batch's time is each job's duration."""
    assert handler.batch is not None
    started = time.perf_counter()
    try:
        answers = handler.batch(jobs)
    except BaseException as exc:  # the call itself failed: every job of it did
        answers = [exc] * len(jobs)
    elapsed = _ms(started)
    outcomes = []
    for job, answer in zip(jobs, answers, strict=True):
        if isinstance(answer, RetryLater):
            outcomes.append(Outcome(job, elapsed, later=answer.seconds, note=_note(answer)))
        elif isinstance(answer, BaseException):
            outcomes.append(failed(handler, job, answer, elapsed))
        else:
            note = _note(answer) if isinstance(answer, Delivery) else None
            outcomes.append(Outcome(job, elapsed, note=note))
    return outcomes


def failed(handler: Handler, job: Job, exc: BaseException, duration_ms: float) -> Outcome:
    """The outcome of an attempt that raised ``exc``: described, redacted, classified."""
    return Outcome(
        job,
        duration_ms,
        _error(handler, job, exc),
        permanent=isinstance(exc, PermanentFailure),
        transient=_transient(exc),
    )


#: SQLSTATEs of failures that say nothing about the job: deadlock, serialization failure.
TRANSIENT_SQLSTATES = frozenset({"40P01", "40001"})


def _transient(exc: BaseException) -> bool:
    """Whether ``exc``, or the driver error it wraps or was raised from, is transient. Read
    from the error codes, not the message, which redaction may have removed."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if getattr(current, "sqlstate", None) in TRANSIENT_SQLSTATES:
            return True
        orig = getattr(current, "orig", None)
        pending += [orig if isinstance(orig, BaseException) else None]
        pending += [current.__cause__, current.__context__]
    return False


def _error(handler: Handler, job: Job, exc: BaseException) -> dict[str, Any]:
    error = describe(exc)
    if handler.redact_error is not None:
        error = redacted(handler.redact_error, job, exc, error)
    return error


def redacted(
    redact: ErrorRedactor, job: Job, exc: BaseException, error: dict[str, Any]
) -> dict[str, Any]:
    """The error as the registry's ``redact_error`` hook keeps it, before it is logged or
    stored. A hook that fails, or returns something else than a message and a traceback,
    gets :func:`redact_messages` instead: a message is never let through by a failing hook."""
    try:
        kept = redact(job, exc, dict(error))
        message, text = kept["message"], kept["traceback"]
        if not isinstance(message, str) or not isinstance(text, str | None):
            raise TypeError("redact_error must return a str message and a str or None traceback")
        message, text = str.__str__(message), None if text is None else str.__str__(text)
    except BaseException as failed:
        try:
            fallback = redact_messages(job, exc, error)
            message, text = fallback["message"], fallback["traceback"]
        except BaseException:  # pragma: no cover - the built-in reads only types and frames
            message, text = "message redacted", None
        message = f"{message} (the redact_error hook raised {_kind(failed)})"
    return {
        "type": error["type"],
        "message": storable(message[:MESSAGE_LIMIT])[:MESSAGE_LIMIT],
        "traceback": None if text is None else _bounded(storable(text), TRACEBACK_LIMIT),
    }


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000
