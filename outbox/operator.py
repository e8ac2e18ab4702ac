"""What operators do to jobs by hand: look, list, revive, cancel; each action recorded with its
actor.

Like :func:`outbox.enqueue`, :func:`revive` and :func:`cancel` act in the caller's transaction:
commit it. :func:`act_in_batches`, for actions on many jobs, commits each batch itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

import sqlalchemy as sa

from outbox.errors import InvalidJob
from outbox.sql import queries

JOB = sa.text(queries["job_by_uuid"])
HISTORY = sa.text(queries["history_of_job"])
REVIVE = sa.text(queries["revive_dead"])
CANCEL = sa.text(queries["cancel_jobs"])
STATES_OF = sa.text(queries["states_of"])
LIST = sa.text(queries["list_jobs"])

#: The states of a live job, as `outbox jobs list` and `outbox status` name them: `scheduled`
#: is a pending job whose run_at is still to come.
LIVE_STATES = ("pending", "scheduled", "running", "dead")
#: Ended jobs have left outbox_jobs: their history answers for them.
ENDED_STATES = ("succeeded", "cancelled")
#: What each action may change. Revive takes dead jobs only: a scheduled job waits for its
#: backoff or a handler's RetryLater on purpose, and running it early would defeat that.
#: Cancel never takes a running job: its relay owns it until it ends or its lease expires.
REVIVABLE = ("dead",)
CANCELLABLE = ("pending", "scheduled", "dead")
#: Jobs changed per transaction by :func:`act_in_batches`.
BATCH = 500


@dataclasses.dataclass(frozen=True, slots=True)
class Action:
    """What an operator action did: the jobs it changed and, for the rest, why not."""

    changed: list[UUID]
    skipped: dict[UUID, str]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Filter:
    """Which live jobs: each field given must match; a field left empty matches every job."""

    #: Any of these states (:data:`LIVE_STATES`).
    states: tuple[str, ...] = ()
    queue: str | None = None
    type: str | None = None
    key: str | None = None
    #: Enqueued at or after this time (time-zone aware).
    since: datetime | None = None

    def __post_init__(self) -> None:
        for state in self.states:
            check_state(state)
        if self.since is not None and self.since.tzinfo is None:
            raise InvalidJob("since must carry a time zone (for example 2026-11-27T00:00Z)")

    @property
    def empty(self) -> bool:
        """Nothing given: it matches every live job."""
        return not self.states and all(
            value is None for value in (self.queue, self.type, self.key, self.since)
        )


def check_state(state: str) -> str:
    """``state`` if a live job can be in it; otherwise an error that says where to look."""
    if state in LIVE_STATES:
        return state
    if state in ENDED_STATES:
        raise InvalidJob(
            f"{state} jobs have left outbox_jobs; their history holds them: "
            f"`outbox audit trail` (for example with --type and --since)"
        )
    raise InvalidJob(f"{state!r} is not a state of a live job: use {', '.join(LIVE_STATES)}")


def show(
    connection: sa.Connection, uuid: UUID
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The live job (None once it has ended) and its whole history.

    Each history row's ``error`` is flattened to ``error_type``, ``error_message`` and
    ``error_traceback``, the names every command uses.
    """
    row = connection.execute(JOB, {"uuid": uuid}).mappings().first()
    trail = []
    for found in connection.execute(HISTORY, {"uuid": uuid}).mappings():
        entry = dict(found)
        error = entry.pop("error") or {}
        for part in ("type", "message", "traceback"):
            entry[f"error_{part}"] = error.get(part)
        trail.append(entry)
    return (dict(row) if row else None), trail


def list_jobs(
    connection: sa.Connection, where: Filter, *, after: int = 0, limit: int | None = 50
) -> list[dict[str, Any]]:
    """Live jobs matching ``where`` in id order, from the first one after id ``after``, at
    most ``limit`` (None: all). The last row's ``id`` is where the next page starts."""
    if limit is not None and limit < 1:
        raise InvalidJob(f"limit must be at least 1, not {limit}")
    params = {
        "states": list(where.states) or None, "queue": where.queue, "type": where.type,
        "key": where.key, "since": where.since, "after": after, "limit": limit,
    }  # fmt: skip
    return [dict(row) for row in connection.execute(LIST, params).mappings()]


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


def act_in_batches(
    connection: sa.Connection,
    action: Callable[..., Action],
    uuids: Sequence[UUID],
    *,
    actor: str,
    reason: str | None = None,
    batch: int = BATCH,
    prepare: Callable[[sa.Connection], None] | None = None,
) -> Action:
    """:func:`revive` or :func:`cancel` on exactly ``uuids``, ``batch`` at a time, committing
    each batch: many jobs change without one long transaction holding all their locks.
    ``prepare`` runs first in each batch's transaction (the console sets its statement
    timeout there).

    Each job's state is checked again as its batch runs: one that changed since it was listed
    is skipped, and named with its state now.
    """
    if not actor.strip():
        raise InvalidJob("the actor must be named: who is doing this?")
    changed: list[UUID] = []
    skipped: dict[UUID, str] = {}
    for start in range(0, len(uuids), batch):
        if prepare is not None:
            prepare(connection)
        done = action(connection, uuids[start : start + batch], actor=actor, reason=reason)
        connection.commit()
        changed.extend(done.changed)
        skipped.update(done.skipped)
    return Action(changed, skipped)


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
    done = set(changed)
    states: dict[UUID, str] = dict(
        connection.execute(STATES_OF, {"uuid": [u for u in uuids if u not in done]}).all()
    )
    skipped = {
        u: (
            f"is {states[u]}, not {wanted}"
            if u in states
            else "is not a live job (ended, or never was)"
        )
        for u in uuids
        if u not in done
    }
    return Action(changed, skipped)
