"""Payload and error redaction (G7): history keeps SHA-256 digests instead of the values.

Three triggers redact, switched together: on ``outbox_history``, one keeps a payload's
SHA-256 instead of the payload and one keeps a failed attempt's error type and SHA-256
instead of its message and traceback; on ``outbox_jobs``, one keeps the SHA-256 of
``last_error``'s message. They are off unless an owner of the tables turns them on, and
apply to rows written from then on (history is append-only).
"""

from __future__ import annotations

import dataclasses

import sqlalchemy as sa

from outbox.errors import OutboxError
from outbox.sql import queries

#: The triggers switched together, by table: outbox_jobs first, the order relays lock the
#: two tables in, so that switching cannot deadlock with a completion.
TRIGGERS = {
    "outbox_jobs": ("outbox_jobs_redact_error",),
    "outbox_history": ("outbox_history_redact_payload", "outbox_history_redact_error"),
}
NAMES = tuple(name for triggers in TRIGGERS.values() for name in triggers)

_STATE = sa.text(queries["redaction_state"])


@dataclasses.dataclass(frozen=True, slots=True)
class Redaction:
    """Which redaction triggers are on and which off, in the order of :data:`NAMES`; both
    only when someone switched a trigger by hand."""

    on: tuple[str, ...]
    off: tuple[str, ...]


def switch(connection: sa.Connection, *, on: bool) -> None:
    """Turn every redaction trigger on or off together, and commit.

    Needs the owner of outbox_jobs and outbox_history. DDL takes no bind parameters: each
    statement is composed from :data:`TRIGGERS`, never from input.
    """
    verb = "ENABLE" if on else "DISABLE"
    try:
        for table, triggers in TRIGGERS.items():
            actions = ", ".join(f"{verb} TRIGGER {name}" for name in triggers)
            connection.execute(sa.text(f"ALTER TABLE {table} {actions}"))
    except sa.exc.ProgrammingError as exc:
        raise OutboxError(
            "only the owner of outbox_jobs and outbox_history can turn redaction on or off: "
            + str(exc.orig).splitlines()[0]
        ) from None
    connection.commit()


def state(connection: sa.Connection) -> Redaction:
    """Which redaction triggers are on now."""
    rows = connection.execute(_STATE, {"names": list(NAMES)})
    enabled = {str(name): bool(on) for name, on in rows}
    return Redaction(
        on=tuple(name for name in NAMES if enabled.get(name)),
        off=tuple(name for name in NAMES if not enabled.get(name)),
    )
