"""Exceptions a user of outbox can meet.

Every message says what was wrong and what to do about it. Anything refused at
enqueue raises before a statement is sent, so nothing reaches the queue (G8).
"""

from __future__ import annotations


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


class MigrationError(OutboxError):
    """The database schema could not be brought to the version this code needs."""


class PermanentFailure(OutboxError):
    """Raised by a handler: this job can never succeed, so it ends ``dead`` at once, not retried."""


class InvalidPayload(PermanentFailure):
    """Raised by a handler that cannot use its job's payload (G8: the job ends ``dead``)."""
