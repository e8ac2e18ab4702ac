"""Claiming: ready jobs become this relay's, in batches, with a lease (see sql/claim.sql)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from outbox.job import Job
from outbox.registry import Registry

from .floors import LOWEST, Floors, Position
from .sql import queries

CLAIM = sa.text(queries["claim_batch"])
CLAIM_ISOLATED = sa.text(queries["claim_isolated"])
ISOLATED_READY = sa.text(queries["isolated_ready"])
NEXT_RUN_AT = sa.text(queries["next_run_at"])


@dataclass(frozen=True)
class AttemptLimits:
    """What a claim needs to settle a job's ``max_attempts``: the job's own, else its
    handler's, else ``default``. The claim stores the result on the row (sql/claim.sql), so
    every later attempt and every rescuer reads one number."""

    default: int
    #: The types the relay has handlers for: the only ones it claims (sql/claim.sql).
    types: tuple[str, ...] = ()
    limits: tuple[int | None, ...] = ()

    @classmethod
    def of(cls, registry: Registry, default: int) -> AttemptLimits:
        handlers = list(registry)
        return cls(
            default, tuple(h.type for h in handlers), tuple(h.max_attempts for h in handlers)
        )

    def params(self) -> dict[str, Any]:
        return {"types": list(self.types), "limits": list(self.limits), "default_max": self.default}


def claim_batch(
    connection: sa.Connection,
    *,
    queues: Sequence[str],
    limit: int,
    lease: timedelta,
    relay: str,
    limits: AttemptLimits,
    rooms: Sequence[int] | None = None,
) -> list[Job]:
    """Claim up to ``limit`` jobs and commit at once; the jobs come back in claim order.
    ``rooms``: each queue's most jobs in this claim (per-queue limits), else ``limit``."""
    floors = Floors().current(queues)
    jobs, _ = claim_past(
        connection, queues=queues, limit=limit, lease=lease, relay=relay, limits=limits,
        rooms=rooms, floors=floors,
    )  # fmt: skip
    return jobs


def claim_past(
    connection: sa.Connection,
    *,
    queues: Sequence[str],
    limit: int,
    lease: timedelta,
    relay: str,
    limits: AttemptLimits,
    rooms: Sequence[int] | None,
    floors: Mapping[str, Any],
    positions: bool = False,
) -> tuple[list[Job], dict[str, Position]]:
    """:func:`claim_batch`, each queue read past its floor (``Floors.params``); with
    ``positions``, also the position of the last job claimed from each queue."""
    rooms = list(rooms) if rooms is not None else [limit] * len(queues)
    params = {"queues": list(queues), "rooms": rooms, "limit": limit, "lease": lease, **floors}
    rows = connection.execute(CLAIM, {**params, "relay": relay, **limits.params()}).all()
    connection.commit()
    last: dict[str, Position] = {}
    for row in rows if positions else ():
        position: Position = (row[9], row[10], row[11])  # _priority, _run_at, _id in _jobs
        if position > last.get(row[2], LOWEST):  # row[2]: the queue
            last[row[2]] = position
    return _jobs(rows), last


def claim_isolated(
    connection: sa.Connection,
    *,
    queues: Sequence[str],
    lease: timedelta,
    relay: str,
    limits: AttemptLimits,
) -> Job | None:
    """Claim one job that must run alone (it lost a lease beside others), if one is ready."""
    rows = connection.execute(
        CLAIM_ISOLATED,
        {"queues": list(queues), "lease": lease, "relay": relay, **limits.params()},
    ).all()
    connection.commit()
    jobs = _jobs(rows)
    return jobs[0] if jobs else None


def isolated_ready(connection: sa.Connection, queues: Sequence[str], types: Sequence[str]) -> bool:
    """Whether a job of ``types`` (those the relay can run) that must run alone is ready in
    ``queues``."""
    params = {"queues": list(queues), "types": list(types)}
    ready = bool(connection.execute(ISOLATED_READY, params).scalar())
    connection.commit()
    return ready


def _jobs(rows: Sequence[Any]) -> list[Job]:
    # Unpacked by position (the order of the statement's SELECT list): the per-row cost of a
    # claim in the relay is mostly here, and names cost a lookup each. The idempotency key
    # comes as the job's uuid where none was given: as text from the claim, since str() of
    # a UUID here took a fifth of the producer's time building jobs.
    return [
        Job(
            uuid=uuid,
            type=type_,
            queue=queue,
            key=key,
            payload=payload,
            attempt=attempt,
            max_attempts=most,
            enqueued_at=enqueued_at,
            idempotency_key=idempotency_key,
        )
        for (
            uuid,
            type_,
            queue,
            key,
            idempotency_key,
            payload,
            attempt,
            most,
            enqueued_at,
            _priority,
            _run_at,
            _id,
        ) in rows
    ]


#: A claim that found nothing in less than this read past few jobs it cannot run: no pause.
FRUITLESS_SLOW = 0.002
#: After a slower one, the relay rests this many times as long before claiming again.
FRUITLESS_REST = 4.0


def fruitless_pause(seconds: float, in_a_row: int) -> float:
    """How long to rest after a claim that took ``seconds`` and found nothing, the
    ``in_a_row``-th such claim since one found jobs.

    Such a claim read past jobs of types this relay has no handler for, at the head of its
    queues (rolling deploys: they wait for a relay that knows them). Every enqueue of one
    notifies the queue, so without a rest an idle relay would claim again at each: with
    100,000 of them waiting, 77% of its time went to claims that found nothing. Resting four
    times as long as the claim took bounds that to about a fifth, at the cost of as much
    delay for a job it can run arriving meanwhile, and only while such jobs wait.

    The first empty claim after one that found jobs rests never: that is how a relay at a
    steady rate finds its queue empty, and one slowed by the sealer, a vacuum or dead rows
    of a pinned xmin horizon would otherwise delay the next job by four times as long.
    """
    if in_a_row < 2 or seconds < FRUITLESS_SLOW:
        return 0.0
    return min(1.0, FRUITLESS_REST * seconds)


def seconds_to_next_run(
    connection: sa.Connection,
    queues: Sequence[str],
    types: Sequence[str],
    floors: Mapping[str, Any] | None = None,
    since: float = 0.0,
) -> float | None:
    """Seconds until the earliest scheduled job of ``types`` in ``queues`` falls due, on the
    database's clock (the relay's own may be off), if any is scheduled. With ``floors``
    (``Floors.current``), each queue is read past its floor. ``since``: seconds since the
    last claim began; a scheduled job (not one enqueued to run at once) that fell due since
    then counts, with an answer of 0 or less."""
    params: dict[str, Any] = {"queues": list(queues), "types": list(types), "since": since}
    params.update(floors if floors is not None else Floors().current(queues))
    seconds = connection.execute(NEXT_RUN_AT, params).scalar()
    connection.commit()
    return None if seconds is None else float(seconds)


def filled_a_room(jobs: Sequence[Job], queues: Sequence[str], rooms: Sequence[int]) -> bool:
    """Whether a claim asked of ``queues`` with per-queue ``rooms`` took all of some queue's
    room: that queue may hold more, so the claim did not read the queues dry, however short
    it came back."""
    taken = Counter(job.queue for job in jobs)
    return any(taken[queue] >= room for queue, room in zip(queues, rooms, strict=True))
