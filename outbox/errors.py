"""Exceptions a user of outbox can meet.

Every message says what was wrong and what to do about it. Anything refused at
enqueue raises before a statement is sent, so nothing reaches the queue (G8).
"""

from __future__ import annotations

import math
from datetime import timedelta
from typing import ClassVar

from outbox.storable import storable


class OutboxError(Exception):
    """Base class of every error outbox raises on purpose."""


class InvalidJob(OutboxError, ValueError):
    """A job was refused at enqueue because one of its options is invalid."""


class PayloadNotJSON(InvalidJob):
    """The payload cannot be stored as JSON without changing its meaning."""


class PayloadTooLarge(InvalidJob):
    """The payload's JSON encoding is over the configured size limit."""


class UnknownJobType(InvalidJob):
    """A strict registry was asked to enqueue a type it has no handler for."""


class RegistryError(OutboxError, ValueError):
    """A handler was registered with bad options or twice for one type."""


class DuplicateHandler(RegistryError):
    """Two handlers were registered for the same job type."""


class ConfigurationError(OutboxError, ValueError):
    """Settings, a DSN or a command-line option is not usable."""


class UnsupportedSession(OutboxError, TypeError):
    """enqueue was given something that is not a SQLAlchemy session or connection."""


class InvalidReceipt(OutboxError, ValueError):
    """outbox.inbox was given a bad consumer name or message id; nothing was written."""


class MigrationError(OutboxError):
    """The database schema could not be brought to the version this code needs."""


class PermanentFailure(OutboxError):
    """Raised by a handler: this job can never succeed, so it ends ``dead`` at once, not retried."""


class InvalidPayload(PermanentFailure):
    """Raised by a handler that cannot use its job's payload (G8: the job ends ``dead``)."""


class RetryLater(OutboxError):
    """Raised by a handler: the job is not done; run it again after ``delay``.

    For a partner's ``Retry-After`` or a rate limit: the job goes back to pending, due
    ``delay`` from now on the database's clock, and history records a ``retried`` row whose
    reason says so. It is not a failure: the attempt is given back, so ``max_attempts``
    still counts failures only. A job may ask at most :attr:`LIMIT` times; the request after
    that ends it ``dead``, so that it cannot loop for ever. A handler with a session has its
    writes rolled back: the job is not done.

    ``delay`` is seconds (an ``int`` or ``float``) or a ``timedelta``, from 0 to
    :attr:`MAX_DELAY`; anything else raises ``TypeError`` or ``ValueError`` here, at
    construction, which fails the attempt like any error of the handler.
    """

    #: Requests a job may make over its life; the one after ends it dead.
    LIMIT: ClassVar[int] = 100
    #: The longest delay one request may ask for.
    MAX_DELAY: ClassVar[timedelta] = timedelta(days=365)
    #: How history's ``reason`` begins for a job put back by a request (the relay counts these).
    REASON: ClassVar[str] = "retry later requested: "

    def __init__(self, delay: float | timedelta, reason: str | None = None) -> None:
        self.seconds = _delay_seconds(delay)
        if reason is not None and not isinstance(reason, str):
            raise TypeError(f"RetryLater reason must be a str, not {type(reason).__name__}")
        #: Why, in a few words (``HTTP 503 from the partner``): kept in history after the
        #: delay, cut to :data:`REASON_MAX` characters, a NUL or a lone surrogate written as
        #: its escape (PostgreSQL stores neither).
        self.reason = None if not reason else storable(reason, REASON_MAX)
        why = f" ({self.reason})" if self.reason else ""
        super().__init__(f"{self.REASON}{_words(self.seconds)}{why}")

    @property
    def delay(self) -> timedelta:
        return timedelta(seconds=self.seconds)

    def __reduce__(self) -> tuple[type[RetryLater], tuple[float, str | None]]:
        return type(self), (self.seconds, self.reason)


#: The longest reason a RetryLater keeps.
REASON_MAX = 500


def _delay_seconds(delay: object) -> float:
    most = RetryLater.MAX_DELAY.total_seconds()
    if isinstance(delay, timedelta):
        seconds = delay.total_seconds()
    elif isinstance(delay, float):
        seconds = delay
    elif isinstance(delay, int) and not isinstance(delay, bool):
        seconds = float(max(min(delay, 2**63), -(2**63)))  # float() of a huge int raises
    else:
        raise TypeError(
            f"RetryLater delay must be seconds (an int or float) or a timedelta, "
            f"not {type(delay).__name__} {delay!r}"
        )
    if not math.isfinite(seconds):
        raise ValueError(f"RetryLater delay must be a finite number of seconds, not {delay!r}")
    if seconds < 0:
        raise ValueError(f"RetryLater delay must not be negative, not {delay!r}")
    if seconds > most:
        raise ValueError(
            f"RetryLater delay of {_words(seconds)} is over the most, "
            f"{_words(most)} (365 days): enqueue a new job with run_at instead"
        )
    return seconds


def _words(seconds: float) -> str:
    """``30s``, ``1.5s``, ``0.25s``: the delay as history's reason shows it."""
    return f"{seconds:.6g}s" if seconds < 1e6 else f"{seconds:.0f}s"
