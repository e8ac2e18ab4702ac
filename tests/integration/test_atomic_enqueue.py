"""G1: a job exists if and only if the transaction that enqueued it committed."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session

import outbox
from outbox.bulk import COPY_THRESHOLD
from outbox.database import libpq_dsn
from tests.integration.helpers import count, history, jobs, relay_idle

PAYLOAD = {"entry_id": 7, "amount": "12.50", "tags": ["a", "b"], "nested": {"x": None}}


def test_committed_enqueue_creates_job_and_enqueued_history(db: sa.Engine) -> None:
    with Session(db) as session:
        handle = outbox.enqueue(
            session, "ledger.posted", PAYLOAD, key="account:42", queue="ledger", priority=3
        )
        session.commit()
    [job] = jobs(db)
    assert (job.uuid, job.type, job.queue, job.key) == (
        handle.uuid,
        "ledger.posted",
        "ledger",
        "account:42",
    )
    assert (job.state, job.attempt, job.priority, job.payload) == ("pending", 0, 3, PAYLOAD)
    assert handle.duplicate is False
    [row] = history(db)
    assert (row.job_uuid, row.event, row.type, row.key, row.payload) == (
        handle.uuid,
        "enqueued",
        "ledger.posted",
        "account:42",
        PAYLOAD,
    )


def test_rolled_back_enqueue_leaves_no_job_and_no_history(db: sa.Engine) -> None:
    with Session(db) as session:
        outbox.enqueue(session, "ledger.posted", PAYLOAD, idempotency_key="entry-7")
        session.rollback()
    assert count(db, "outbox_jobs") == count(db, "outbox_history") == 0
    assert count(db, "outbox_idempotency") == 0


def test_rolled_back_bulk_enqueue_leaves_nothing(db: sa.Engine) -> None:
    batch = [
        outbox.NewJob("bulk.item", {"n": n}, key=f"k{n % 7}") for n in range(COPY_THRESHOLD * 2)
    ]
    with Session(db) as session:
        handles = outbox.enqueue_many(session, batch)
        assert len(handles) == len(batch)
        session.rollback()
    assert count(db, "outbox_jobs") == count(db, "outbox_history") == 0


def test_enqueue_inside_rolled_back_savepoint_is_undone_with_it(db: sa.Engine) -> None:
    with Session(db) as session:
        kept = outbox.enqueue(session, "a.kept", {})
        savepoint = session.begin_nested()
        outbox.enqueue(session, "a.dropped", {})
        savepoint.rollback()
        session.commit()
    assert [j.uuid for j in jobs(db)] == [kept.uuid]


def test_job_is_invisible_to_others_until_commit(db: sa.Engine) -> None:
    with Session(db) as session:
        outbox.enqueue(session, "a.b", {})
        session.flush()
        assert count(db, "outbox_jobs") == 0
        session.commit()
    assert count(db, "outbox_jobs") == 1


def test_enqueue_commits_with_the_domain_write(db: sa.Engine) -> None:
    with db.begin() as conn:
        conn.execute(sa.text("CREATE TABLE IF NOT EXISTS g1_domain (id int primary key)"))
    try:
        with Session(db) as session:
            session.execute(sa.text("INSERT INTO g1_domain VALUES (1)"))
            outbox.enqueue(session, "a.b", {"id": 1})
            session.commit()
        with Session(db) as session:
            session.execute(sa.text("INSERT INTO g1_domain VALUES (2)"))
            outbox.enqueue(session, "a.b", {"id": 2})
            with pytest.raises(sa.exc.IntegrityError):
                session.execute(sa.text("INSERT INTO g1_domain VALUES (1)"))  # fails the txn
            session.rollback()
        assert [j.payload["id"] for j in jobs(db)] == [1]
    finally:
        with db.begin() as conn:
            conn.execute(sa.text("DROP TABLE g1_domain"))


def test_enqueue_on_a_connection(db: sa.Engine) -> None:
    with db.connect() as conn:
        handle = outbox.enqueue(conn, "a.b", {})
        conn.commit()
    assert [j.uuid for j in jobs(db)] == [handle.uuid]


def test_bulk_enqueue_on_an_autocommit_connection_is_still_all_or_nothing(db: sa.Engine) -> None:
    batch = [outbox.NewJob("bulk.item", {"n": n}) for n in range(COPY_THRESHOLD)]
    with db.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        outbox.enqueue_many(conn, batch)
    assert count(db, "outbox_jobs") == count(db, "outbox_history") == COPY_THRESHOLD


@pytest.mark.parametrize("size", [3, COPY_THRESHOLD + 3], ids=["statement", "copy"])
def test_enqueue_many_returns_handles_in_order_and_ids_follow_it(db: sa.Engine, size: int) -> None:
    batch = [outbox.NewJob("bulk.item", {"n": n}, key="one-key") for n in range(size)]
    with Session(db) as session:
        handles = outbox.enqueue_many(session, batch)
        session.commit()
    rows = jobs(db)
    assert [r.uuid for r in rows] == [h.uuid for h in handles]
    assert [r.payload["n"] for r in rows] == list(range(size))
    assert count(db, "outbox_history") == size


@pytest.mark.parametrize("size", [2, COPY_THRESHOLD], ids=["statement", "copy"])
def test_delay_counts_from_the_database_clock(db: sa.Engine, size: int) -> None:
    with Session(db) as session:
        outbox.enqueue_many(session, [outbox.NewJob("a.b", {}, delay=90)] * size)
        session.commit()
    assert {r.run_at - r.enqueued_at for r in jobs(db)} == {timedelta(seconds=90)}


def test_run_at_is_kept_exactly(db: sa.Engine) -> None:
    when = datetime(2031, 1, 2, 3, 4, 5, 600_000, tzinfo=UTC)
    with Session(db) as session:
        outbox.enqueue(session, "a.b", {}, run_at=when)
        session.commit()
    assert jobs(db)[0].run_at == when


@pytest.mark.parametrize(
    "options",
    [{}, {"key": "account:1", "queue": "ledger", "priority": 7, "max_attempts": 4, "delay": 60},
     {"run_at": datetime(2031, 1, 2, tzinfo=UTC)}],
    ids=["plain", "every-option", "run-at"],
)  # fmt: skip
def test_one_job_is_written_as_a_batch_writes_it(db: sa.Engine, options: dict[str, Any]) -> None:
    """One job without an idempotency key has a statement of its own: its row and its
    history are what the batch statement writes for the same job."""
    with Session(db) as session:
        alone = outbox.enqueue(session, "a.b", PAYLOAD, **options).uuid
        pair = outbox.enqueue_many(session, [outbox.NewJob("a.b", PAYLOAD, **options)] * 2)
        session.commit()
    kept = ("type", "queue", "key", "payload", "priority", "max_attempts", "attempt", "state")
    rows = {j.uuid: j for j in jobs(db)}
    assert [{k: getattr(rows[u], k) for k in kept} for u in (alone, pair[0].uuid)] == [
        {k: getattr(rows[pair[1].uuid], k) for k in kept}
    ] * 2
    assert rows[alone].run_at - rows[alone].enqueued_at == (
        rows[pair[0].uuid].run_at - rows[pair[0].uuid].enqueued_at
    )
    [event] = history(db, alone)
    [twin] = history(db, pair[0].uuid)
    assert (event.event, event.type, event.key) == (twin.event, twin.type, twin.key)


def test_empty_enqueue_many_writes_nothing(db: sa.Engine) -> None:
    with Session(db) as session:
        assert outbox.enqueue_many(session, []) == []
        session.commit()
    assert count(db, "outbox_jobs") == 0


@pytest.mark.parametrize("size", [1, COPY_THRESHOLD], ids=["statement", "copy"])
def test_one_notification_per_queue_per_transaction(db: sa.Engine, dsn: str, size: int) -> None:
    with psycopg.connect(libpq_dsn(dsn), autocommit=True) as listener, relay_idle(dsn):
        listener.execute("LISTEN outbox_jobs")
        with Session(db) as session:
            for _ in range(3):
                outbox.enqueue_many(session, [outbox.NewJob("a.b", {}, queue="ledger")] * size)
            outbox.enqueue(session, "a.b", {}, queue="mail")
            session.commit()
        got = sorted(n.payload for n in listener.notifies(timeout=2, stop_after=3))
    assert got == ["ledger", "mail"]


async def test_async_session_enqueue_commits_and_rolls_back(
    db: sa.Engine, async_engine: AsyncEngine
) -> None:
    async with AsyncSession(async_engine) as session:
        kept = await outbox.enqueue(session, "a.kept", {"n": 1}, key="k")
        await session.commit()
        await outbox.enqueue(session, "a.dropped", {"n": 2})
        await session.rollback()
    assert [j.uuid for j in jobs(db)] == [kept.uuid]


@pytest.mark.parametrize("size", [3, COPY_THRESHOLD], ids=["statement", "copy"])
async def test_async_enqueue_many(db: sa.Engine, async_engine: AsyncEngine, size: int) -> None:
    batch = [outbox.NewJob("a.b", {"n": n}, idempotency_key=f"i{n % 2}") for n in range(size)]
    async with AsyncSession(async_engine) as session:
        handles = await outbox.enqueue_many(session, batch)
        await session.commit()
    assert [h.duplicate for h in handles[:3]] == [False, False, True]
    assert count(db, "outbox_jobs") == 2
    async with async_engine.connect() as conn:
        handle = await outbox.enqueue(conn, "a.c", {})
        await conn.commit()
    assert handle.uuid in {j.uuid for j in jobs(db)}


def test_payload_round_trips_unicode_and_numbers(db: sa.Engine) -> None:
    payload = {
        "name": "Zoë 北京 🚀",
        "big": 2**62,
        "neg": -1.5e-7,
        "esc": 'q"\\\n\t',
        "lit": "\\u0000",
    }
    with Session(db) as session:
        outbox.enqueue_many(session, [outbox.NewJob("a.b", payload)] * (COPY_THRESHOLD + 1))
        outbox.enqueue(session, "a.b", payload)
        session.commit()
    assert {json.dumps(j.payload, sort_keys=True) for j in jobs(db)} == {
        json.dumps(payload, sort_keys=True)
    }
