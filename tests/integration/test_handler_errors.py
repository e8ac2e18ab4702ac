"""G6 keeps every error: whatever a handler raises, its attempt fails with that error on
record, and only its own job is charged; neighbours that ran beside it are not."""

from __future__ import annotations

import json
from typing import Any

import pytest
import sqlalchemy as sa
import structlog
import tenacity
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import outbox
import outbox.registry
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


# -- keeping payload values out of errors ------------------------------------------------------

CARD = "4111-2222-3333-4444"


@pytest.fixture
def cards(db: sa.Engine) -> sa.Engine:
    """A table of the application's that refuses test card numbers when they are flushed."""
    with db.begin() as conn:
        conn.execute(sa.text("DROP TABLE IF EXISTS cards"))
        conn.execute(sa.text("CREATE TABLE cards (number text CHECK (number NOT LIKE '4111%'))"))
    return db


def stored_errors(engine: sa.Engine) -> str:
    """Every error history and the live jobs hold, as text."""
    with engine.connect() as conn:
        history = conn.execute(
            sa.text("SELECT coalesce(string_agg(error::text, ' '), '') FROM outbox_history")
        ).scalar_one()
        live = conn.execute(
            sa.text("SELECT coalesce(string_agg(last_error, ' '), '') FROM outbox_jobs")
        ).scalar_one()
    return f"{history} {live}"


def card_registry(**options: Any) -> outbox.Registry:
    """Handlers that fail with the card number in the message, each in its own way."""
    registry = outbox.Registry(**options)

    @registry.handler("card.parse", max_attempts=2, retry=tenacity.wait_fixed(0))
    def parse(job: outbox.Job) -> None:
        int(job.payload["card"])  # ValueError: invalid literal for int() ... the number

    @registry.handler("card.store", max_attempts=2, retry=tenacity.wait_fixed(0))
    def store(job: outbox.Job, session: Session) -> None:
        # Refused when flushed, by the table's CHECK: the error quotes the row and parameters.
        session.execute(sa.text("SELECT 1"))
        session.add(Card(number=job.payload["card"]))

    @registry.handler("card.chained", max_attempts=1)
    def chained(job: outbox.Job) -> None:
        try:
            raise KeyError(job.payload["card"])
        except KeyError as exc:
            raise RuntimeError(f"lookup of {job.payload['card']} failed") from exc

    return registry


class Base(DeclarativeBase):
    pass


class Card(Base):
    __tablename__ = "cards"
    number: Mapped[str] = mapped_column(primary_key=True)


def run_card_jobs(engine: sa.Engine, dsn: str, registry: outbox.Registry) -> list[dict[str, Any]]:
    """Run one job of each card handler to its end; return what the relay logged."""
    uuids = [enqueue(engine, t, [{"card": CARD}])[0] for t in ("card.parse", "card.store")]
    uuids += enqueue(engine, "card.chained", [{"card": CARD}])
    with structlog.testing.capture_logs() as logged, running_relay(registry, dsn):
        wait_for(lambda: ended(engine, uuids), timeout=10, what="every job to end")
    for uuid in uuids:
        assert "failed" in events(engine, uuid)
    return logged


def test_with_redaction_no_error_message_reaches_logs_or_history(
    cards: sa.Engine, dsn: str
) -> None:
    registry = card_registry(redact_error=outbox.registry.redact_messages)
    logged = run_card_jobs(cards, dsn, registry)
    failures = [e for e in logged if e["event"] in ("job failed; will retry", "job dead")]
    assert len(failures) == 5  # parse and store twice each, chained once
    assert CARD not in json.dumps(logged, default=str)
    leaked = [e for e in logged if "4111" in json.dumps(e, default=str)]
    assert not leaked
    stored = stored_errors(cards)
    assert "4111" not in stored
    # What stays: the type, and where each error was raised.
    with cards.connect() as conn:
        kept = conn.execute(sa.text(
            "SELECT error->>'type', error->>'message', error->>'traceback' FROM outbox_history "
            "WHERE event = 'failed' AND type = 'card.parse'"
        )).all()  # fmt: skip
    assert {(t, m) for t, m, _ in kept} == {("builtins.ValueError", "ValueError: message redacted")}
    assert all('in parse\n    int(job.payload["card"])' in tb for _, _, tb in kept)


def test_without_redaction_error_messages_are_kept_as_raised(cards: sa.Engine, dsn: str) -> None:
    """The documented default: a message that quotes a payload value is logged and stored."""
    logged = run_card_jobs(cards, dsn, card_registry())
    assert CARD in json.dumps(logged, default=str)
    assert f"invalid literal for int() with base 10: '{CARD}'" in stored_errors(cards)


def test_a_redaction_hook_that_fails_falls_back_to_keeping_no_message(
    db: sa.Engine, dsn: str
) -> None:
    def broken(job: outbox.Job, exc: BaseException, error: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError(f"redaction of {job.payload['card']} failed")

    registry = outbox.Registry(redact_error=broken)

    @registry.handler("card.parse", max_attempts=1)
    def parse(job: outbox.Job) -> None:
        int(job.payload["card"])

    [uuid] = enqueue(db, "card.parse", [{"card": CARD}])
    with structlog.testing.capture_logs() as logged, running_relay(registry, dsn):
        wait_for(lambda: ended(db, [uuid]), timeout=10, what="the job to end")
    assert "4111" not in json.dumps(logged, default=str)
    assert "4111" not in stored_errors(db)
    [(_, kind, message)] = failures(db, uuid)
    assert kind == "builtins.ValueError"
    assert message == "ValueError: message redacted (the redact_error hook raised RuntimeError)"
