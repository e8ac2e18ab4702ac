"""A handler asks for a later retry (``raise outbox.RetryLater(delay)``): the job runs again
after that delay on the database's clock, recorded in history, without spending a failure's
attempt, and a job that keeps asking ends dead (G6, G7)."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
import tenacity
from prometheus_client import REGISTRY
from sqlalchemy.orm import Session

import outbox
import outbox.operator
from tests.integration.relay_harness import events, live_jobs, running_relay, scalar, wait_for


def enqueue(engine: sa.Engine, type_: str, **options: Any) -> outbox.Enqueued:
    with Session(engine) as session:
        handle = outbox.enqueue(session, type_, {}, **options)
        session.commit()
    return handle


def history(engine: sa.Engine, uuid: Any) -> list[sa.Row[Any]]:
    with engine.connect() as conn:
        return list(conn.execute(sa.text(
            "SELECT event, attempt, at, run_at, reason, error, duration_ms FROM outbox_history "
            "WHERE job_uuid = :u ORDER BY id"), {"u": uuid}))  # fmt: skip


def postponed_count(type_: str) -> float:
    value = REGISTRY.get_sample_value(
        "outbox_jobs_completed_total", {"queue": "default", "type": type_, "outcome": "postponed"}
    )
    return value or 0.0


@pytest.mark.parametrize("delay", [1.5, timedelta(seconds=1.5)], ids=["seconds", "timedelta"])
def test_the_job_runs_again_after_the_delay_on_the_database_clock(
    db: sa.Engine, dsn: str, delay: float | timedelta
) -> None:
    seen: list[int] = []
    registry = outbox.Registry()

    # max_attempts=1: asking for a later retry spends no attempt, or the job would be dead.
    @registry.handler("a.partner", max_attempts=1)
    def partner(job: outbox.Job) -> None:
        seen.append(job.attempt)
        if len(seen) == 1:
            raise outbox.RetryLater(delay)

    before = postponed_count("a.partner")
    handle = enqueue(db, "a.partner")
    with running_relay(registry, dsn):
        wait_for(lambda: live_jobs(db) == 0, what="the job to run twice and succeed")
    assert seen == [1, 1]
    rows = history(db, handle.uuid)
    assert [r.event for r in rows] == ["enqueued", "claimed", "retried", "claimed", "succeeded"]
    _, first, retried, second, _ = rows
    assert retried.reason == "retry later requested: 1.5s"
    assert retried.attempt == first.attempt == second.attempt == 1
    assert retried.error is None
    assert retried.duration_ms is not None
    # run_at is now() + 1.5 s of the completing transaction; the next claim is not before it.
    assert retried.run_at - retried.at == timedelta(seconds=1.5)
    assert second.at >= retried.run_at
    assert postponed_count("a.partner") - before == 1


def test_a_session_handler_that_asks_to_retry_later_has_its_writes_rolled_back(
    db: sa.Engine, dsn: str
) -> None:
    with db.begin() as conn:
        conn.execute(sa.text("DROP TABLE IF EXISTS later_effects"))
        conn.execute(sa.text("CREATE TABLE later_effects (job uuid, attempt int, note text)"))
    calls: list[int] = []
    registry = outbox.Registry()

    @registry.handler("a.write")
    def write(job: outbox.Job, session: Session) -> None:
        calls.append(job.attempt)
        note = "asked later" if len(calls) == 1 else "done"
        session.execute(
            sa.text("INSERT INTO later_effects VALUES (:j, :a, :n)"),
            {"j": job.uuid, "a": job.attempt, "n": note},
        )
        if len(calls) == 1:
            raise outbox.RetryLater(0.2)

    handle = enqueue(db, "a.write")
    with running_relay(registry, dsn):
        wait_for(lambda: live_jobs(db) == 0, what="the job done on its second run")
    with db.connect() as conn:
        written = conn.execute(sa.text("SELECT job, attempt, note FROM later_effects")).all()
    assert written == [(handle.uuid, 1, "done")]
    assert events(db, handle.uuid)[-3:] == ["retried", "claimed", "succeeded"]


def test_a_job_that_keeps_asking_ends_dead_with_a_clear_reason(
    db: sa.Engine, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outbox.RetryLater, "LIMIT", 3)
    asked: list[int] = []
    registry = outbox.Registry()

    @registry.handler("a.forever", max_attempts=2)
    def forever(job: outbox.Job) -> None:
        asked.append(job.attempt)
        raise outbox.RetryLater(0)

    handle = enqueue(db, "a.forever")
    with running_relay(registry, dsn):
        wait_for(lambda: scalar(db, "SELECT state FROM outbox_jobs") == "dead", what="dead")
    assert asked == [1, 1, 1, 1]  # three requests honoured, the fourth refused
    rows = history(db, handle.uuid)
    assert [r.event for r in rows] == [
        "enqueued", "claimed", "retried", "claimed", "retried", "claimed", "retried",
        "claimed", "failed", "dead",
    ]  # fmt: skip
    message = (
        "asked to retry later more than 3 times, the most a job may: "
        "it ends dead so that it cannot loop for ever"
    )
    failed = rows[-2]
    assert (failed.error["type"], failed.error["message"]) == ("outbox.RetryLater", message)
    assert scalar(db, "SELECT last_error FROM outbox_jobs") == message
    assert scalar(db, "SELECT attempt FROM outbox_jobs") == 1


def test_a_revived_job_may_ask_again(
    db: sa.Engine, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An operator who revives a job that asked too often gives it its requests back."""
    monkeypatch.setattr(outbox.RetryLater, "LIMIT", 1)
    calls: list[int] = []
    registry = outbox.Registry()

    @registry.handler("a.revived")
    def revived(job: outbox.Job) -> None:
        calls.append(job.attempt)
        if len(calls) in (1, 2, 3):  # asks, is refused, then asks once more after revival
            raise outbox.RetryLater(0)

    handle = enqueue(db, "a.revived")
    with running_relay(registry, dsn):
        wait_for(lambda: scalar(db, "SELECT state FROM outbox_jobs") == "dead", what="dead")
        with db.begin() as conn:
            outbox.operator.revive(conn, [handle.uuid], actor="ops", reason="partner is back")
        wait_for(lambda: live_jobs(db) == 0, what="the revived job to ask once and succeed")
    assert events(db, handle.uuid)[-6:] == [
        "dead", "revived", "claimed", "retried", "claimed", "succeeded",
    ]  # fmt: skip


def test_a_failure_after_a_later_retry_still_has_all_its_attempts(db: sa.Engine, dsn: str) -> None:
    calls: list[int] = []
    registry = outbox.Registry()

    @registry.handler("a.mixed", max_attempts=2, retry=tenacity.wait_fixed(0.05))
    def mixed(job: outbox.Job) -> None:
        calls.append(job.attempt)
        if len(calls) <= 2:
            raise outbox.RetryLater(0.05)
        raise RuntimeError(f"refused on attempt {job.attempt}")

    handle = enqueue(db, "a.mixed")
    with running_relay(registry, dsn):
        wait_for(lambda: scalar(db, "SELECT state FROM outbox_jobs") == "dead", what="dead")
    assert calls == [1, 1, 1, 2]
    assert [e for e in events(db, handle.uuid) if e in ("failed", "dead")] == [
        "failed", "failed", "dead",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("delay", "error"),
    [
        (-5, "ValueError: RetryLater delay must not be negative, not -5"),
        (float("nan"), "ValueError: RetryLater delay must be a finite number of seconds"),
        (True, "TypeError: RetryLater delay must be seconds (an int or float) or a timedelta"),
        ("30", "TypeError: RetryLater delay must be seconds (an int or float) or a timedelta"),
    ],
)
def test_a_bad_delay_fails_the_attempt_with_a_clear_error(
    db: sa.Engine, dsn: str, delay: Any, error: str
) -> None:
    """The delay is checked when the handler builds the exception: a bad one is that
    handler's error, kept and retried like any other, never a postponement."""
    registry = outbox.Registry()

    @registry.handler("a.bad", max_attempts=1)
    def bad(job: outbox.Job) -> None:
        raise outbox.RetryLater(delay)

    handle = enqueue(db, "a.bad")
    with running_relay(registry, dsn):
        wait_for(lambda: scalar(db, "SELECT state FROM outbox_jobs") == "dead", what="dead")
    assert events(db, handle.uuid) == ["enqueued", "claimed", "failed", "dead"]
    kind, _, message = error.partition(": ")
    failed = history(db, handle.uuid)[2].error
    assert failed["type"] == f"builtins.{kind}"
    assert failed["message"].startswith(message)


def test_a_keyed_job_that_waits_to_retry_keeps_its_key(db: sa.Engine, dsn: str) -> None:
    """Per-key order (G4): the job behind it runs only after it has."""
    order: list[str] = []
    first_ran = threading.Event()
    registry = outbox.Registry()

    @registry.handler("a.first")
    def first(job: outbox.Job) -> None:
        if not first_ran.is_set():
            first_ran.set()
            raise outbox.RetryLater(0.5)
        order.append("first")

    registry.register("a.second", lambda job: order.append("second"))
    enqueue(db, "a.first", key="account:1")
    enqueue(db, "a.second", key="account:1")
    with running_relay(registry, dsn):
        wait_for(lambda: live_jobs(db) == 0, what="both jobs")
    assert order == ["first", "second"]


@pytest.mark.parametrize(
    ("reason", "kept"),
    [("partner\x00said no", "partner\\x00said no"), ("bad \ud800 text", "bad \\ud800 text")],
    ids=["NUL", "lone-surrogate"],
)
def test_a_reason_postgresql_cannot_store_is_kept_escaped(
    db: sa.Engine, dsn: str, reason: str, kept: str
) -> None:
    """A partner's answer may hold a NUL or a lone surrogate: PostgreSQL text takes neither,
    and the completion used to be abandoned, leaving the job running until its lease ran out,
    again at every attempt."""
    calls: list[int] = []
    registry = outbox.Registry()

    @registry.handler("a.partner")
    def partner(job: outbox.Job) -> None:
        calls.append(job.attempt)
        if len(calls) == 1:
            raise outbox.RetryLater(0.1, reason=reason)

    handle = enqueue(db, "a.partner")
    with running_relay(registry, dsn):
        wait_for(lambda: live_jobs(db) == 0, what="the job to be retried and succeed")
    rows = history(db, handle.uuid)
    assert [r.event for r in rows] == ["enqueued", "claimed", "retried", "claimed", "succeeded"]
    assert rows[2].reason == f"retry later requested: 0.1s ({kept})"
