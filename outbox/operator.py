"""What operators do to jobs by hand: look, revive, cancel; each action recorded with its actor.

Like :func:`outbox.enqueue`, these act in the caller's transaction: commit it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any
from uuid import UUID

import sqlalchemy as sa

from outbox.errors import InvalidJob
from outbox.sql import queries

JOB = sa.text(queries["job_by_uuid"])
HISTORY = sa.text(queries["history_of_job"])
REVIVE = sa.text(queries["revive_dead"])
CANCEL = sa.text(queries["cancel_jobs"])
STATES = sa.text(queries["states_of"])


@dataclasses.dataclass(frozen=True, slots=True)
class Action:
    """What an operator action did: the jobs it changed and, for the rest, why not."""

    changed: list[UUID]
    skipped: dict[UUID, str]


def show(
    connection: sa.Connection, uuid: UUID
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The live job (None once it has ended) and its whole history."""
    row = connection.execute(JOB, {"uuid": uuid}).mappings().first()
    trail = [dict(r) for r in connection.execute(HISTORY, {"uuid": uuid}).mappings()]
    return (dict(row) if row else None), trail


def revive(
    connection: sa.Connection,
    uuids: Sequence[UUID] = (),
    *,
    key: str | None = None,
    actor: str,
    reason: str | None = None,
) -> Action:
    """Dead jobs (by uuid, or every dead job of ``key``) go back to pending with fresh attempts."""
    return _act(connection, REVIVE, uuids, key, actor, reason, "dead")


def cancel(
    connection: sa.Connection,
    uuids: Sequence[UUID] = (),
    *,
    key: str | None = None,
    actor: str,
    reason: str | None = None,
) -> Action:
    """Pending or dead jobs (by uuid, or all of ``key``) end, cancelled."""
    return _act(connection, CANCEL, uuids, key, actor, reason, "pending or dead")


def _act(
    connection: sa.Connection,
    statement: sa.TextClause,
    uuids: Sequence[UUID],
    key: str | None,
    actor: str,
    reason: str | None,
    wanted: str,
) -> Action:
    if not uuids and key is None:
        raise InvalidJob("name the jobs: one or more uuids, or a key")
    if not actor.strip():
        raise InvalidJob("the actor must be named: who is doing this?")
    params = {"uuid": list(uuids), "key": key, "actor": actor, "reason": reason}
    changed = list(connection.execute(statement, params).scalars())
    states: dict[UUID, str] = dict(
        connection.execute(STATES, {"uuid": [u for u in uuids if u not in changed]}).all()
    )
    skipped = {
        u: (
            f"is {states[u]}, not {wanted}"
            if u in states
            else "is not a live job (ended, or never was)"
        )
        for u in uuids
        if u not in changed
    }
    return Action(changed, skipped)
