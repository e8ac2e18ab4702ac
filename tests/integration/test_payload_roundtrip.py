"""G8: a payload comes back to its handler as it was enqueued, every number of the same type
and value, or it is refused at enqueue. jsonb stores numbers as numeric: 1e16 would come back
as the int 10000000000000000, and -0.0 as 0.0."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any
from uuid import UUID

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from outbox_relay.claim import AttemptLimits, claim_batch
from sqlalchemy.orm import Session

import outbox
from outbox.bulk import COPY_THRESHOLD
from outbox.database import binary_arrays, fast_json
from tests.integration.helpers import count

QUEUE = "roundtrip"
EDGES = [
    1e16, -1e16, 1e22, 1.5e300, 1.7976931348623157e308, -1.7976931348623157e308,
    1e-7, 5e-324, -5e-324, 2.2250738585072014e-308, 0.1, 0.0, 1.0, 1e15, 123456789.125,
    9007199254740993.0, 2.0**53, 2.0**64,
]  # fmt: skip

_floats = st.sampled_from(EDGES) | st.floats(allow_nan=False, allow_infinity=False).filter(
    lambda x: x != 0 or math.copysign(1, x) > 0
)
_text = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=8)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | _floats | _text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_text, children, max_size=4),
    max_leaves=20,
)


def same(got: Any, want: Any) -> bool:
    """Equal, and of the same types all the way down: 1.0 == 1, but a float is no int."""
    if type(got) is not type(want):
        return False
    if isinstance(want, dict):
        return got.keys() == want.keys() and all(same(got[k], want[k]) for k in want)
    if isinstance(want, list):
        return len(got) == len(want) and all(same(g, w) for g, w in zip(got, want, strict=True))
    if isinstance(want, float):
        return got == want and math.copysign(1, got) == math.copysign(1, want)
    return bool(got == want)


def claimed_payloads(engine: sa.Engine, limit: int) -> dict[UUID, dict[str, Any]]:
    """Payloads as the relay's claim hands them to handlers: read as its claims' engine
    reads them (orjson, outbox/fastjson.py)."""
    claims = sa.create_engine(engine.url, poolclass=sa.NullPool)
    binary_arrays(claims)
    fast_json(claims)
    try:
        with claims.connect() as conn:
            jobs = claim_batch(
                conn, queues=[QUEUE], limit=limit, lease=timedelta(seconds=30), relay="host:1:a",
                limits=AttemptLimits(default=5, types=("round.trip",)),
            )  # fmt: skip
    finally:
        claims.dispose()
    return {job.uuid: job.payload for job in jobs}


def clean(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("SET LOCAL session_replication_role = replica"))
        conn.execute(sa.text("TRUNCATE outbox_jobs, outbox_history"))


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(payload=st.dictionaries(_text, _json, max_size=6))
def test_any_payload_reaches_its_handler_as_enqueued(engine: sa.Engine, payload: Any) -> None:
    clean(engine)
    with Session(engine) as session:
        handle = outbox.enqueue(session, "round.trip", payload, queue=QUEUE)
        session.commit()
    got = claimed_payloads(engine, 1)[handle.uuid]
    assert same(got, payload), (got, payload)


@pytest.mark.parametrize("value", EDGES)
def test_every_float_comes_back_a_float_of_the_same_value(db: sa.Engine, value: float) -> None:
    payload = {"x": value, "list": [value, {"y": value}], "int": 10**20}
    with Session(db) as session:
        handle = outbox.enqueue(session, "round.trip", payload, queue=QUEUE)
        session.commit()
    assert same(claimed_payloads(db, 1)[handle.uuid], payload)
    with db.connect() as conn:
        stored = conn.execute(
            sa.text(
                "SELECT payload FROM outbox_history WHERE job_uuid = :u AND event = 'enqueued'"
            ),
            {"u": handle.uuid},
        ).scalar_one()
    assert same(stored, payload)


def test_floats_of_a_bulk_enqueue_come_back_floats(db: sa.Engine) -> None:
    jobs = [
        outbox.NewJob("round.trip", {"x": EDGES[n % len(EDGES)], "n": n}, queue=QUEUE)
        for n in range(COPY_THRESHOLD)
    ]
    with Session(db) as session:
        handles = outbox.enqueue_many(session, jobs)
        session.commit()
    got = claimed_payloads(db, COPY_THRESHOLD)
    for handle, job in zip(handles, jobs, strict=True):
        assert same(got[handle.uuid], job.payload)


@pytest.mark.parametrize("payload", [{"x": -0.0}, {"x": [1.0, {"y": -0.0}]}])
def test_negative_zero_is_refused_and_nothing_is_written(
    db: sa.Engine, payload: dict[str, Any]
) -> None:
    with Session(db) as session:
        with pytest.raises(outbox.PayloadNotJSON, match=r"-0\.0"):
            outbox.enqueue(session, "round.trip", payload)
        with pytest.raises(outbox.PayloadNotJSON, match=r"-0\.0"):
            outbox.enqueue_many(session, [outbox.NewJob("round.trip", payload)] * COPY_THRESHOLD)
        session.commit()
    assert count(db, "outbox_jobs") == 0
