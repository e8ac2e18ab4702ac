"""G6 keeps every error: whatever a handler raises, its attempt fails with that error on
record, and only its own job is charged; neighbours that ran beside it are not."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

import outbox
from tests.integration.relay_harness import events, running_relay, wait_for


class Halt(BaseException):
    """A BaseException of the application's own, as some frameworks define them."""


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("__str__ is broken")


class Unrepresentable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("__str__ is broken")

    def __repr__(self) -> str:
        raise RuntimeError("__repr__ is broken")


RAISED: list[tuple[str, BaseException, str, str]] = [
    ("keyboard interrupt", KeyboardInterrupt(), "builtins.KeyboardInterrupt", "KeyboardInterrupt"),
    ("base exception", Halt("line stopped"), f"{__name__}.Halt", "line stopped"),
    ("broken str", Unprintable("declined"), f"{__name__}.Unprintable", "declined"),
    ("broken str and repr", Unrepresentable(), f"{__name__}.Unrepresentable", "Unrepresentable"),
    ("nul in message", ValueError("bad\x00byte"), "builtins.ValueError", "bad\\x00byte"),
]


def enqueue(engine: sa.Engine, job_type: str, payloads: list[dict[str, Any]]) -> list[Any]:
    with Session(engine) as session:
        handles = outbox.enqueue_many(session, [outbox.NewJob(job_type, p) for p in payloads])
        session.commit()
    return [h.uuid for h in handles]


def failures(engine: sa.Engine, uuid: Any) -> list[tuple[int, str, str]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT attempt, error->>'type', error->>'message' FROM outbox_history "
                "WHERE job_uuid = :u AND event = 'failed' ORDER BY id"
            ),
            {"u": uuid},
        )
        return [tuple(r) for r in rows]  # type: ignore[misc]


def ended(engine: sa.Engine, uuids: list[Any]) -> bool:
    ends = {"succeeded", "dead"}
    return all(ends & set(events(engine, u)) for u in uuids)


@pytest.mark.parametrize(("case", "exc", "kind", "message"), RAISED, ids=[r[0] for r in RAISED])
def test_whatever_a_handler_raises_fails_its_attempt_with_the_error_kept(
    db: sa.Engine, dsn: str, case: str, exc: BaseException, kind: str, message: str
) -> None:
    registry = outbox.Registry()

    @registry.handler("errors.plain", max_attempts=1)
    def plain(job: outbox.Job) -> None:
        raise exc

    [uuid] = enqueue(db, "errors.plain", [{}])
    with running_relay(registry, dsn):
        wait_for(lambda: ended(db, [uuid]), timeout=10, what="the job to end")
    assert events(db, uuid) == ["enqueued", "claimed", "failed", "dead"]
    [(attempt, stored_kind, stored_message)] = failures(db, uuid)
    assert (attempt, stored_kind) == (1, kind)
    assert message in stored_message


@pytest.mark.parametrize(("case", "exc", "kind", "message"), RAISED, ids=[r[0] for r in RAISED])
def test_a_session_handler_that_raises_anything_charges_only_its_own_job(
    db: sa.Engine, dsn: str, case: str, exc: BaseException, kind: str, message: str
) -> None:
    registry = outbox.Registry()

    @registry.handler("errors.session", max_attempts=1)
    def in_session(job: outbox.Job, session: Session) -> None:
        session.execute(sa.text("SELECT 1"))
        if job.payload["raise"]:
            raise exc

    uuids = enqueue(db, "errors.session", [{"raise": n == 2} for n in range(5)])
    with running_relay(registry, dsn, claim_batch=5):
        wait_for(lambda: ended(db, uuids), timeout=10, what="every job to end")
    bad = uuids.pop(2)
    for uuid in uuids:
        assert events(db, uuid) == ["enqueued", "claimed", "succeeded"]
    assert events(db, bad) == ["enqueued", "claimed", "failed", "dead"]
    [(attempt, stored_kind, stored_message)] = failures(db, bad)
    assert (attempt, stored_kind) == (1, kind)
    assert message in stored_message
