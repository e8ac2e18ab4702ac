"""The inbox: a consumer that records each message id in the transaction applying the message
applies it once, however often and however concurrently the message arrives."""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session

import outbox
from outbox.cli import cli
from outbox.inbox import prune
from tests.integration.helpers import login_role
from tests.integration.relay_harness import scalar, wait_for

#: The table a consumer's effects go to in these tests: one row per application of a message.
EFFECTS = "inbox_test_effects"


@pytest.fixture
def effects(db: sa.Engine) -> Iterator[sa.Engine]:
    with db.begin() as conn:
        conn.execute(sa.text(f"CREATE TABLE {EFFECTS} (message_id text NOT NULL)"))
    try:
        yield db
    finally:
        with db.begin() as conn:
            conn.execute(sa.text(f"DROP TABLE {EFFECTS}"))


def consume(conn: sa.Connection, consumer: str, message_id: str) -> bool:
    """What a consumer does with one message: record it, and apply it only the first time."""
    first = outbox.inbox(conn, consumer, message_id)
    if first:
        conn.execute(sa.text(f"INSERT INTO {EFFECTS} VALUES (:m)"), {"m": message_id})
    return first


def receipts(engine: sa.Engine) -> int:
    return int(scalar(engine, "SELECT count(*) FROM outbox_inbox"))


def applied(engine: sa.Engine, message_id: str) -> int:
    return int(
        scalar(engine, f"SELECT count(*) FROM {EFFECTS} WHERE message_id = :m", m=message_id)
    )


def test_the_first_receipt_of_an_id_is_true_and_every_later_one_false(effects: sa.Engine) -> None:
    message_id = str(uuid.uuid4())
    with effects.begin() as conn:
        assert consume(conn, "billing", message_id) is True
        assert consume(conn, "billing", message_id) is False  # again in the same transaction
    for _ in range(3):
        with effects.begin() as conn:
            assert consume(conn, "billing", message_id) is False
    assert applied(effects, message_id) == 1
    assert receipts(effects) == 1


def test_a_rolled_back_receipt_leaves_nothing_and_the_redelivery_applies_it(
    effects: sa.Engine,
) -> None:
    message_id = str(uuid.uuid4())
    with contextlib.suppress(RuntimeError), effects.begin() as conn:
        assert consume(conn, "billing", message_id) is True
        raise RuntimeError("the consumer failed while applying it")
    assert receipts(effects) == 0
    assert applied(effects, message_id) == 0
    with effects.begin() as conn:
        assert consume(conn, "billing", message_id) is True
    assert applied(effects, message_id) == 1


def test_each_consumer_receives_a_message_once_for_itself(db: sa.Engine) -> None:
    message_id = str(uuid.uuid4())
    with db.begin() as conn:
        assert outbox.inbox(conn, "billing", message_id) is True
        assert outbox.inbox(conn, "shipping", message_id) is True
        assert outbox.inbox(conn, "billing", message_id) is False
        assert outbox.inbox(conn, "shipping", message_id) is False
    assert receipts(db) == 2


def test_a_uuid_and_its_text_are_one_message_id(db: sa.Engine) -> None:
    message_id = uuid.uuid4()
    with db.begin() as conn:
        assert outbox.inbox(conn, "billing", message_id) is True
        assert outbox.inbox(conn, "billing", str(message_id)) is False
    assert scalar(db, "SELECT message_id FROM outbox_inbox") == str(message_id)


def test_an_orm_session_records_the_receipt_in_its_transaction(db: sa.Engine) -> None:
    message_id = str(uuid.uuid4())
    with Session(db) as session:
        assert outbox.inbox(session, "billing", message_id) is True
        session.rollback()
    assert receipts(db) == 0
    with Session(db) as session, session.begin():
        assert outbox.inbox(session, "billing", message_id) is True
    with Session(db) as session, session.begin():
        assert outbox.inbox(session, "billing", message_id) is False
    assert scalar(db, "SELECT received_at > now() - interval '1 minute' FROM outbox_inbox")


async def test_an_async_session_and_connection_record_receipts(
    db: sa.Engine, async_engine: AsyncEngine
) -> None:
    message_id = str(uuid.uuid4())
    async with AsyncSession(async_engine) as session, session.begin():
        assert await outbox.inbox(session, "billing", message_id) is True
    async with AsyncSession(async_engine) as session, session.begin():
        assert await outbox.inbox(session, "billing", message_id) is False
    async with async_engine.begin() as conn:
        assert await outbox.inbox(conn, "billing", message_id) is False
        assert await outbox.inbox(conn, "shipping", message_id) is True
    assert receipts(db) == 2


def _waiting_on_the_inbox(engine: sa.Engine, n: int) -> Callable[[], bool]:
    def waiting() -> bool:
        count = scalar(
            engine,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND query LIKE '%outbox_inbox%'",
        )
        return int(count) == n

    return waiting


def _race(
    engine: sa.Engine, message_id: str, first_commits: bool, others: int = 6
) -> tuple[list[bool], bool]:
    """A first transaction receives the id and holds; ``others`` more receive it meanwhile
    (each waits on the first's row), then the first commits or rolls back."""
    held, release = threading.Event(), threading.Event()
    results: list[bool] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    first: list[bool] = []

    def holder() -> None:
        try:
            with engine.connect() as conn:
                first.append(consume(conn, "billing", message_id))
                held.set()
                release.wait(30)
                conn.commit() if first_commits else conn.rollback()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
            held.set()

    def receiver() -> None:
        try:
            with engine.begin() as conn:
                got = consume(conn, "billing", message_id)
            with lock:
                results.append(got)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    first_thread = threading.Thread(target=holder)
    first_thread.start()
    assert held.wait(15)
    threads = [threading.Thread(target=receiver) for _ in range(others)]
    for thread in threads:
        thread.start()
    try:
        wait_for(_waiting_on_the_inbox(engine, others), 15, f"{others} receipts waiting")
    finally:
        release.set()
        for thread in [first_thread, *threads]:
            thread.join(30)
    assert not errors, errors
    assert len(results) == others
    return results, first[0]


def test_concurrent_receipts_of_one_id_apply_it_exactly_once(effects: sa.Engine) -> None:
    message_id = str(uuid.uuid4())
    results, first = _race(effects, message_id, first_commits=True)
    assert first is True
    assert results == [False] * 6
    assert applied(effects, message_id) == 1
    assert receipts(effects) == 1


def test_when_the_first_receipt_rolls_back_exactly_one_waiting_receipt_applies_it(
    effects: sa.Engine,
) -> None:
    message_id = str(uuid.uuid4())
    results, first = _race(effects, message_id, first_commits=False)
    assert first is True  # but rolled back: its effect is gone with it
    assert sorted(results) == [False] * 5 + [True]
    assert applied(effects, message_id) == 1
    assert receipts(effects) == 1


def test_receipts_racing_from_free_threads_apply_each_id_once(effects: sa.Engine) -> None:
    ids = [str(uuid.uuid4()) for _ in range(20)]
    start = threading.Barrier(8)
    firsts: list[bool] = []
    lock = threading.Lock()

    def receive_all() -> None:
        start.wait(15)
        for message_id in ids:
            with effects.begin() as conn:
                got = consume(conn, "billing", message_id)
            with lock:
                firsts.append(got)

    threads = [threading.Thread(target=receive_all) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(firsts) == 8 * 20
    assert firsts.count(True) == 20
    assert scalar(effects, f"SELECT count(*) FROM {EFFECTS}") == 20
    assert scalar(effects, f"SELECT count(DISTINCT message_id) FROM {EFFECTS}") == 20


# -- bad input: one clear error, nothing written ----------------------------------------


@pytest.mark.parametrize(
    ("consumer", "message_id", "error"),
    [
        (None, "m-1", "inbox consumer must be a str, not NoneType"),
        ("", "m-1", "inbox consumer must not be empty"),
        ("billing service", "m-1", "may hold only letters, digits and _ . : / -"),
        ("-billing", "m-1", "must start with a letter or digit"),
        ("b" * 129, "m-1", "is 129 characters; at most 128"),
        ("billing", None, "inbox message_id must be a str or UUID, not NoneType"),
        ("billing", 7, "inbox message_id must be a str or UUID, not int"),
        ("billing", b"m-1", "not bytes: decode the header first"),
        ("billing", "", "inbox message_id must not be empty or blank"),
        ("billing", "   ", "inbox message_id must not be empty or blank"),
        ("billing", " m-1", "starts or ends with white space"),
        ("billing", "m-1\n", "starts or ends with white space"),
        ("billing", "m\x00-1", "contains a control character"),
        ("billing", "m" * 256, "is 256 characters; at most 255"),
        ("billing", "m-\ud800", "is not valid Unicode"),
    ],
)
def test_a_bad_consumer_or_message_id_is_refused_before_anything_is_written(
    db: sa.Engine, consumer: Any, message_id: Any, error: str
) -> None:
    with db.begin() as conn:
        with pytest.raises(outbox.InvalidReceipt, match=error.replace(".", r"\.")) as raised:
            outbox.inbox(conn, consumer, message_id)
        assert isinstance(raised.value, ValueError)
    assert receipts(db) == 0


def test_something_that_is_not_a_session_is_refused() -> None:
    with pytest.raises(outbox.UnsupportedSession, match="not str"):
        outbox.inbox("postgresql://", "billing", "m-1")  # type: ignore[call-overload]


def test_a_session_of_another_driver_is_refused(dsn: str) -> None:
    engine = sa.create_engine("sqlite://")
    with engine.connect() as conn, pytest.raises(outbox.UnsupportedSession, match="psycopg 3"):
        outbox.inbox(conn, "billing", "m-1")


# -- retention ---------------------------------------------------------------------------


def _received(engine: sa.Engine, ago: dict[str, timedelta]) -> None:
    with engine.begin() as conn:
        for message_id, age in ago.items():
            assert outbox.inbox(conn, "billing", message_id)
            conn.execute(
                sa.text("UPDATE outbox_inbox SET received_at = now() - :age WHERE message_id = :m"),
                {"age": age, "m": message_id},
            )


def run(dsn: str, *args: str, **env: str) -> Any:
    return CliRunner().invoke(cli, ["--dsn", dsn, *args], env=env, catch_exceptions=False)


def test_outbox_prune_removes_receipts_past_the_retention_only(dsn: str, db: sa.Engine) -> None:
    _received(db, {"old-1": timedelta(days=8), "old-2": timedelta(days=30),
                   "young": timedelta(days=6)})  # fmt: skip
    result = run(dsn, "prune")
    assert result.exit_code == 0, result.output
    assert "removed 2 inbox receipt(s) older than 7d 0h" in result.output
    assert scalar(db, "SELECT array_agg(message_id) FROM outbox_inbox") == ["young"]
    with db.begin() as conn:  # forgotten: a copy arriving now would be applied again
        assert outbox.inbox(conn, "billing", "old-1") is True
        assert outbox.inbox(conn, "billing", "young") is False


def test_outbox_prune_follows_outbox_inbox_retention(dsn: str, db: sa.Engine) -> None:
    _received(db, {"twelve-days": timedelta(days=12), "eight-days": timedelta(days=8)})
    result = run(dsn, "prune", OUTBOX_INBOX_RETENTION="10d")
    assert "removed 1 inbox receipt(s) older than 10d 0h" in result.output, result.output
    assert scalar(db, "SELECT array_agg(message_id) FROM outbox_inbox") == ["eight-days"]
    result = run(dsn, "prune", OUTBOX_INBOX_RETENTION="1d", OUTBOX_IDEMPOTENCY_RETENTION="1d")
    assert "removed 1 inbox receipt(s) older than 1d 0h" in result.output, result.output


def test_receipts_are_kept_at_least_as_long_as_idempotency_keys(dsn: str, db: sa.Engine) -> None:
    _received(db, {"ten-days": timedelta(days=10), "forty-days": timedelta(days=40)})
    result = run(dsn, "prune", OUTBOX_INBOX_RETENTION="1d", OUTBOX_IDEMPOTENCY_RETENTION="30d")
    assert "removed 1 inbox receipt(s) older than 30d 0h" in result.output, result.output
    assert scalar(db, "SELECT array_agg(message_id) FROM outbox_inbox") == ["ten-days"]


def test_a_bad_inbox_retention_is_refused_and_nothing_is_pruned(dsn: str, db: sa.Engine) -> None:
    _received(db, {"old": timedelta(days=30)})
    for value, error in [("soon", "OUTBOX_INBOX_RETENTION='soon' is not a duration"),
                         ("0", "inbox_retention must be longer than zero")]:  # fmt: skip
        result = CliRunner().invoke(
            cli, ["--dsn", dsn, "prune"], env={"OUTBOX_INBOX_RETENTION": value}
        )
        assert result.exit_code == 2, result.output
        assert error in result.output
    assert receipts(db) == 1


def test_prune_removes_receipts_a_batch_per_transaction(db: sa.Engine) -> None:
    _received(db, {f"old-{n}": timedelta(days=9) for n in range(7)} | {"new": timedelta(0)})
    with db.connect() as conn:
        assert prune(conn, timedelta(days=7), batch=3) == 7
    assert receipts(db) == 1


# -- roles -------------------------------------------------------------------------------


def test_the_app_role_receives_messages_but_cannot_forget_or_change_a_receipt(
    dsn: str, db: sa.Engine
) -> None:
    with login_role(db, dsn, "outbox_app") as app:
        with app.begin() as conn:
            assert outbox.inbox(conn, "billing", "m-1") is True
        with app.begin() as conn:
            assert outbox.inbox(conn, "billing", "m-1") is False
        for statement in ("DELETE FROM outbox_inbox", "UPDATE outbox_inbox SET consumer = 'x'"):
            denied = pytest.raises(sa.exc.ProgrammingError, match="permission denied")
            with denied, app.begin() as conn:
                conn.execute(sa.text(statement))
    assert receipts(db) == 1


def test_the_auditor_reads_receipts_and_the_writer_prunes_them(dsn: str, db: sa.Engine) -> None:
    _received(db, {"old": timedelta(days=30)})
    with login_role(db, dsn, "outbox_auditor") as auditor:
        assert scalar(auditor, "SELECT count(*) FROM outbox_inbox") == 1
        denied = pytest.raises(sa.exc.ProgrammingError, match="permission denied")
        with denied, auditor.begin() as conn:
            outbox.inbox(conn, "billing", "m-2")
    with login_role(db, dsn, "outbox_writer") as writer, writer.connect() as conn:
        assert prune(conn, timedelta(days=7)) == 1
    assert receipts(db) == 0
