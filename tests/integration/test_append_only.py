"""G7: history and seals are append-only, for the application's role and even the superuser."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

import outbox
from outbox.audit import seal
from outbox.database import create_engine, sqlalchemy_url
from tests.integration.relay_harness import SEALING, live_jobs, running_relay, scalar, wait_for

CHANGES = [
    "UPDATE outbox_history SET event = 'succeeded'",
    "DELETE FROM outbox_history",
    "TRUNCATE outbox_history",
    "UPDATE outbox_seals SET row_count = 0",
    "DELETE FROM outbox_seals",
    "TRUNCATE outbox_seals",
]


def login_role(engine: sa.Engine, member_of: str) -> Iterator[str]:
    name = f"outbox_t_{secrets.token_hex(4)}"
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE ROLE {name} LOGIN IN ROLE {member_of}"))
    try:
        yield name
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP OWNED BY {name}"))
            conn.execute(sa.text(f"DROP ROLE {name}"))


@pytest.fixture
def writer(db: sa.Engine) -> Iterator[str]:
    yield from login_role(db, "outbox_writer")


@pytest.fixture
def auditor(db: sa.Engine) -> Iterator[str]:
    yield from login_role(db, "outbox_auditor")


def as_role(dsn: str, role: str) -> str:
    return sqlalchemy_url(dsn).set(username=role, password=None).render_as_string()


def seed(db: sa.Engine) -> None:
    with Session(db) as session:
        outbox.enqueue(session, "a.b", {"n": 1})
        session.commit()
    with db.connect() as conn:  # other sessions' transactions may hold sealing back a moment
        wait_for(lambda: seal.seal_all(conn), timeout=SEALING, what="the enqueue to be sealed")


@pytest.mark.parametrize("change", CHANGES)
def test_even_the_superuser_cannot_change_history(db: sa.Engine, change: str) -> None:
    seed(db)
    with db.connect() as conn, pytest.raises(sa.exc.DBAPIError, match="append-only"):
        conn.execute(sa.text(change))


@pytest.mark.parametrize("change", CHANGES)
def test_the_writer_role_cannot_change_history(
    db: sa.Engine, dsn: str, writer: str, change: str
) -> None:
    seed(db)
    engine = create_engine(as_role(dsn, writer), poolclass=sa.NullPool)
    try:
        with engine.connect() as conn, pytest.raises(sa.exc.DBAPIError):
            conn.execute(sa.text(change))
    finally:
        engine.dispose()
    assert scalar(db, "SELECT count(*) FROM outbox_history") == 1


def test_a_relay_with_only_the_writer_role_does_its_whole_job(
    db: sa.Engine, dsn: str, writer: str
) -> None:
    registry = outbox.Registry()
    registry.register("w.ok", lambda job: None)

    def fails(job: outbox.Job) -> None:
        raise RuntimeError("no")

    registry.register("w.bad", fails, max_attempts=1)
    as_writer = as_role(dsn, writer)
    engine = create_engine(as_writer, poolclass=sa.NullPool)
    try:
        with Session(engine) as session:
            outbox.enqueue_many(session, [outbox.NewJob("w.ok", {}, key="k")] * 3
                                + [outbox.NewJob("w.bad", {}, idempotency_key="i")])  # fmt: skip
            outbox.enqueue_many(session, [outbox.NewJob("w.ok", {})] * 600)  # the COPY path
            session.commit()
    finally:
        engine.dispose()
    with running_relay(registry, as_writer):
        wait_for(lambda: live_jobs(db) == 1, what="every job to end")
    assert scalar(db, "SELECT state FROM outbox_jobs") == "dead"
    assert scalar(db, "SELECT count(*) FROM outbox_history WHERE event = 'succeeded'") == 603
    # ... and sealed what settled, with the writer's rights alone
    assert scalar(db, "SELECT count(*) FROM outbox_seals") >= 1


@pytest.mark.parametrize("column", ["xid", "at"])
def test_the_writer_cannot_choose_when_or_in_which_transaction_history_was_written(
    db: sa.Engine, dsn: str, writer: str, column: str
) -> None:
    engine = create_engine(as_role(dsn, writer), poolclass=sa.NullPool)
    value = "1" if column == "xid" else "'2001-01-01Z'"
    try:
        with engine.connect() as conn, pytest.raises(sa.exc.ProgrammingError, match="permission"):
            conn.execute(sa.text(
                f"INSERT INTO outbox_history (job_uuid, event, type, queue, {column}) "
                f"VALUES (gen_random_uuid(), 'enqueued', 'x', 'y', {value})"
            ))  # fmt: skip
    finally:
        engine.dispose()


def test_the_auditor_reads_everything_and_writes_nothing(
    db: sa.Engine, dsn: str, auditor: str
) -> None:
    seed(db)
    engine = create_engine(as_role(dsn, auditor), poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM outbox_history")).scalar() == 1
            assert conn.execute(sa.text("SELECT count(*) FROM outbox_jobs")).scalar() == 1
        with engine.connect() as conn, pytest.raises(sa.exc.ProgrammingError, match="permission"):
            conn.execute(sa.text(
                "INSERT INTO outbox_history (job_uuid, event, type, queue) "
                "VALUES (gen_random_uuid(), 'enqueued', 'x', 'y')"
            ))  # fmt: skip
    finally:
        engine.dispose()
