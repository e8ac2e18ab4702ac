"""outbox: a transactional outbox and job relay on PostgreSQL.

Enqueue jobs in the same transaction as the domain rows that cause them; relays
claim and run them; every transition is kept in an append-only history.
"""

from outbox import collector as _collector

with _collector.paused():  # the imports below create long-lived objects only
    from outbox import publish
    from outbox.enqueue import Enqueued, NewJob, enqueue, enqueue_many
    from outbox.errors import (
        ConfigurationError,
        DuplicateHandler,
        InvalidJob,
        InvalidPayload,
        InvalidReceipt,
        MigrationError,
        OutboxError,
        PayloadNotJSON,
        PayloadTooLarge,
        PermanentFailure,
        RegistryError,
        RetryLater,
        UnknownJobType,
        UnsupportedSession,
    )
    from outbox.inbox import inbox
    from outbox.job import Job
    from outbox.registry import Handler, Registry
    from outbox.settings import Settings

__all__ = [
    "ConfigurationError",
    "DuplicateHandler",
    "Enqueued",
    "Handler",
    "InvalidJob",
    "InvalidPayload",
    "InvalidReceipt",
    "Job",
    "MigrationError",
    "NewJob",
    "OutboxError",
    "PayloadNotJSON",
    "PayloadTooLarge",
    "PermanentFailure",
    "Registry",
    "RegistryError",
    "RetryLater",
    "Settings",
    "UnknownJobType",
    "UnsupportedSession",
    "enqueue",
    "enqueue_many",
    "inbox",
    "publish",
]
