"""outbox.publish and registry.destination through a real relay and PostgreSQL, with a
target that keeps what it is given in memory (each broker's own target has its own tests
against the real broker: test_publish_<broker>.py)."""

from __future__ import annotations

import threading
from typing import Any

import prometheus_client
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

import outbox
from outbox.database import create_engine_async
from outbox.publish import (
    Delivery,
    Limits,
    Message,
    Publish,
    PublishFailed,
    PublishRejected,
)
from tests.integration.relay_harness import events, running_relay, scalar, wait_for


class Recorder:
    """A target that confirms every message, or answers what a test tells it to."""

    extra = "none"

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.started: list[Limits] = []
        self.closed = 0
        self.answers: list[Exception | None] = []  # consumed one per publish, then confirm
        self._lock = threading.Lock()

    def start(self, limits: Limits) -> None:
        self.started.append(limits)

    def publish(self, message: Message) -> Delivery:
        with self._lock:
            answer = self.answers.pop(0) if self.answers else None
            if answer is None:
                self.messages.append(message)
        if answer is not None:
            raise answer
        return Delivery("delivered", f"seq {len(self.messages)}")

    def close(self) -> None:
        self.closed += 1


@pytest.fixture
def target() -> Recorder:
    return Recorder()


def registry_for(target: Recorder, **options: Any) -> outbox.Registry:
    registry = outbox.Registry()
    registry.destination("orders", target, **options)
    return registry


def history(db: sa.Engine, uuid: Any) -> list[tuple[str, str | None]]:
    with db.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT event, reason FROM outbox_history WHERE job_uuid = :u ORDER BY id"),
            {"u": uuid},
        )
        return [(row.event, row.reason) for row in rows]


def test_a_published_message_is_a_job_in_the_callers_transaction(db: sa.Engine) -> None:
    with Session(db) as session:
        handle = outbox.publish(session, "orders", {"order_id": 7}, key="order:7",
                                event="order.paid", headers={"tenant": "t1"})  # fmt: skip
        session.rollback()
    assert scalar(db, "SELECT count(*) FROM outbox_jobs") == 0  # G1: rolled back, no message
    with Session(db) as session:
        handle = outbox.publish(session, "orders", {"order_id": 7}, key="order:7",
                                event="order.paid", headers={"tenant": "t1"})  # fmt: skip
        session.commit()
    with db.connect() as conn:
        row = conn.execute(sa.text("SELECT type, key, payload FROM outbox_jobs")).one()
    assert (row.type, row.key) == ("publish:orders", "order:7")
    assert row.payload == {"message": {"order_id": 7}, "event": "order.paid",
                           "headers": {"tenant": "t1"}}  # fmt: skip
    assert events(db, handle.uuid) == ["enqueued"]


async def test_publish_with_an_async_session_and_many_at_once(dsn: str, db: sa.Engine) -> None:
    from sqlalchemy.ext.asyncio import AsyncSession

    engine = create_engine_async(dsn)
    try:
        async with AsyncSession(engine) as session:
            one = await outbox.publish(session, "orders", [1, 2, 3], key="k")
            many = await outbox.publish.publish_many(
                session, [Publish("orders", {"n": n}, key="k") for n in range(3)]
            )
            await session.commit()
    finally:
        await engine.dispose()
    with Session(db) as session:
        more = outbox.publish.publish_many(session, [Publish("feed", n) for n in range(1500)])
        session.commit()
    assert len({one.uuid, *(h.uuid for h in many)}) == 4
    assert len(more) == 1500
    assert scalar(db, "SELECT count(*) FROM outbox_jobs WHERE type = 'publish:feed'") == 1500


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"destination": ""}, "destination must not be empty"),
        ({"destination": "bad name"}, "destination 'bad name' may hold only"),
        ({"destination": 7}, "destination must be a str"),
        ({"message": {1, 2}}, "set"),
        ({"message": float("nan")}, "not JSON"),
        ({"headers": {"outbox-key": "x"}}, "set by outbox"),
        ({"headers": {"Webhook-Id": "x"}}, "set by outbox"),
        ({"headers": {"bad name": "x"}}, "must be a token"),
        ({"headers": {"a": "line\nbreak"}}, "printable text"),
        ({"headers": {"a": 1}}, "must be a str"),
        ({"headers": {"A": "1", "a": "2"}}, "given twice"),
        ({"headers": ["a"]}, "mapping of str to str"),
        ({"event": ""}, "printable characters"),
        ({"event": 5}, "event must be a str"),
        ({"key": ""}, "key must not be empty"),
        ({"delay": -1}, "delay"),
    ],
)
def test_bad_input_is_refused_before_anything_is_written(
    db: sa.Engine, options: dict[str, Any], message: str
) -> None:
    arguments: dict[str, Any] = {"destination": "orders", "message": {"ok": True}, **options}
    with Session(db) as session:
        with pytest.raises(outbox.InvalidJob, match=message):
            outbox.publish(session, arguments.pop("destination"), arguments.pop("message"),
                           **arguments)  # fmt: skip
        session.commit()
    assert scalar(db, "SELECT count(*) FROM outbox_jobs") == 0


def test_one_bad_message_refuses_a_whole_batch_and_says_which(db: sa.Engine) -> None:
    batch: list[Any] = [Publish("orders", 1), Publish("orders", 2, headers={"outbox-x": "y"})]
    with Session(db) as session:
        with pytest.raises(
            outbox.InvalidJob, match=r"message 1 of 2 \(destination .orders.\): header .outbox-x."
        ):
            outbox.publish.publish_many(session, batch)
        with pytest.raises(outbox.InvalidJob, match="message 0 of 1: publish_many takes"):
            outbox.publish.publish_many(session, [("orders", 1)])  # type: ignore[list-item]
        session.commit()
    assert scalar(db, "SELECT count(*) FROM outbox_jobs") == 0


@pytest.mark.parametrize(
    ("message", "error", "said"),
    [
        ({1, 2}, outbox.PayloadNotJSON, "message is not JSON: Object of type set"),
        ({"a": float("nan")}, outbox.PayloadNotJSON, "message is not JSON: Out of range float"),
        ({1: "a"}, outbox.PayloadNotJSON, "message key 1 is an int; JSON object keys must be str"),
        ({"s": "a\x00b"}, outbox.PayloadNotJSON, r"message holds a NUL character"),
        ([-0.0], outbox.PayloadNotJSON, r"message holds -0\.0"),
        ("\ud800", outbox.PayloadNotJSON, "message holds text that is not valid Unicode"),
        ("x" * 2**20, outbox.PayloadTooLarge, r"message is 1048\d\d\d bytes of JSON"),
    ],
)
def test_a_message_that_cannot_be_stored_is_refused_as_the_message_it_is(
    db: sa.Engine, message: Any, error: type[Exception], said: str
) -> None:
    """The caller passed a message, not a payload: the refusal speaks of the message, and of
    which message of a batch and its destination."""
    with Session(db) as session:
        with pytest.raises(error, match=f"^{said}"):
            outbox.publish(session, "orders", message)
        with pytest.raises(error, match=rf"^message 1 of 2 \(destination 'orders'\): {said}"):
            outbox.publish.publish_many(session, [Publish("feed", 1), Publish("orders", message)])
        session.commit()
    assert scalar(db, "SELECT count(*) FROM outbox_jobs") == 0


def test_a_registry_refuses_what_is_not_a_destination() -> None:
    registry = outbox.Registry()
    with pytest.raises(outbox.RegistryError, match="is not a publishing target"):
        registry.destination("orders", object())  # type: ignore[arg-type]
    with pytest.raises(outbox.RegistryError, match="destination 'a b'"):
        registry.destination("a b", Recorder())
    registry.destination("orders", Recorder())
    with pytest.raises(outbox.DuplicateHandler, match="already"):
        registry.destination("orders", Recorder())


def test_messages_are_delivered_once_each_under_their_uuid_in_key_order(
    db: sa.Engine, dsn: str, target: Recorder
) -> None:
    with Session(db) as session:
        handles = outbox.publish.publish_many(session, [
            Publish("orders", {"n": n, "price": 1.5}, key=f"order:{n % 5}", event="order.paid",
                    headers={"tenant": "t1"})
            for n in range(200)
        ])  # fmt: skip
        session.commit()
    with running_relay(registry_for(target), dsn, concurrency=8):
        wait_for(lambda: len(target.messages) == 200, 20, "every message")
    assert target.closed == 1
    [limits] = target.started
    assert limits.lease_seconds > 0
    assert limits.longest_backoff_seconds > 0
    by_uuid = {m.uuid: m for m in target.messages}
    assert set(by_uuid) == {h.uuid for h in handles}  # each once, under its job's uuid
    first = by_uuid[handles[0].uuid]
    assert first.body == b'{"n":0,"price":1.5}'
    assert first.wire_headers() == {"tenant": "t1", "outbox-key": "order:0",
                                    "outbox-event": "order.paid"}  # fmt: skip
    for key in range(5):  # G4: a key's messages reach the target in commit order
        sent = [int(m.body.split(b'"n":')[1].split(b",")[0]) for m in target.messages
                if m.key == f"order:{key}"]  # fmt: skip
        assert sent == sorted(sent)
    assert history(db, handles[0].uuid)[-1][0] == "succeeded"
    assert history(db, handles[0].uuid)[-1][1].startswith("delivered: seq ")  # type: ignore[union-attr]


def test_a_refusal_ends_dead_and_a_retry_after_waits_with_its_reason(
    db: sa.Engine, dsn: str, target: Recorder
) -> None:
    target.answers = [
        PublishRejected("no route for 'orders'", status=312),
        PublishFailed("HTTP 503 from the partner", status=503, retry_after=0.3),
        PublishFailed("connection reset"),
    ]
    with Session(db) as session:
        refused = outbox.publish(session, "orders", {"n": 1}, key="a")
        waited = outbox.publish(session, "orders", {"n": 2}, key="b")
        session.commit()
    with running_relay(registry_for(target, retry=None), dsn, concurrency=1):
        wait_for(lambda: len(target.messages) == 1, 20, "the postponed message")
        wait_for(lambda: "dead" in events(db, refused.uuid), 10, "the refused one dead")
    trail = history(db, refused.uuid)
    assert [e for e, _ in trail] == ["enqueued", "claimed", "failed", "dead"]
    error = scalar(
        db, "SELECT error FROM outbox_history WHERE job_uuid = :u AND event = 'failed'",
        u=refused.uuid,
    )  # fmt: skip
    assert "orders refused the message (status 312): no route for 'orders'" in error["message"]
    reasons = [r for e, r in history(db, waited.uuid) if e == "retried"]
    assert any(r and r.startswith("retry later requested: 0.3s (HTTP 503 from the partner)")
               for r in reasons)  # fmt: skip


def test_publishes_are_counted_by_destination_and_outcome(
    db: sa.Engine, dsn: str, target: Recorder
) -> None:
    def count(outcome: str) -> float:
        value = prometheus_client.REGISTRY.get_sample_value(
            "outbox_publish_total", {"destination": "orders", "outcome": outcome}
        )
        return value or 0.0

    before = count("delivered"), count("rejected")
    target.answers = [PublishRejected("gone", status=410)]
    with Session(db) as session:
        outbox.publish(session, "orders", 1)
        outbox.publish(session, "orders", 2)
        session.commit()
    with running_relay(registry_for(target), dsn, concurrency=1):
        wait_for(lambda: len(target.messages) == 1, 20, "one delivery")
        wait_for(lambda: count("rejected") == before[1] + 1, 10, "one refusal")
    assert count("delivered") == before[0] + 1


def test_a_job_of_a_destination_that_no_publish_wrote_ends_dead_with_the_reason(
    db: sa.Engine, dsn: str, target: Recorder
) -> None:
    with Session(db) as session:
        handle = outbox.enqueue(session, "publish:orders", {"not": "a message"})
        session.commit()
    with running_relay(registry_for(target), dsn):
        wait_for(lambda: "dead" in events(db, handle.uuid), 10, "the job dead")
    assert target.messages == []


def test_a_target_that_cannot_start_leaves_the_relay_running(
    db: sa.Engine, dsn: str, target: Recorder
) -> None:
    def broken(limits: Limits) -> None:
        raise ConnectionError("broker unreachable")

    target.start = broken  # type: ignore[method-assign]
    with Session(db) as session:
        outbox.publish(session, "orders", 1)
        session.commit()
    with running_relay(registry_for(target), dsn):
        wait_for(lambda: len(target.messages) == 1, 10, "the delivery after all")


class BatchRecorder(Recorder):
    """A target that also takes many messages in one call, as brokers with pipelined
    confirms do; answers per message at its position, refusing bodies that ask for it."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[int] = []
        self.failures: list[Exception] = []  # each fails one whole call

    def publish_many(self, messages: list[Message]) -> list[Delivery | Exception]:
        with self._lock:
            self.calls.append(len(messages))
            if self.failures:
                raise self.failures.pop(0)
        answers: list[Delivery | Exception] = []
        for message in messages:
            if b"refuse" in message.body:
                answers.append(PublishRejected("unroutable", status=312))
            else:
                answers.append(self.publish(message))
        return answers


def test_a_target_that_publishes_in_batches_gets_a_claims_messages_together(
    db: sa.Engine, dsn: str
) -> None:
    target = BatchRecorder()
    target.failures = [PublishFailed("connection reset by the broker")]
    with Session(db) as session:
        handles = outbox.publish.publish_many(session, [
            Publish("orders", {"n": n}, key=f"k{n % 5}" if n % 3 == 0 else None)
            for n in range(600)
        ])  # fmt: skip
        refused = outbox.publish(session, "orders", "refuse")
        session.commit()
    with running_relay(registry_for(target), dsn):
        wait_for(lambda: len(target.messages) == 600, 30, "every message but one")
        wait_for(lambda: scalar(db, "SELECT count(*) FROM outbox_jobs") == 1, 10, "completions")
    assert max(target.calls) > 10  # handed over together, not one by one
    assert max(target.calls) <= outbox.publish.target.BATCH
    assert {m.uuid for m in target.messages} == {h.uuid for h in handles}  # each once
    assert events(db, refused.uuid)[-2:] == ["failed", "dead"]
    failed = scalar(
        db, "SELECT count(DISTINCT job_uuid) FROM outbox_history WHERE event = 'failed' "
        "AND error->>'message' LIKE '%connection reset by the broker%'",
    )  # fmt: skip
    assert failed == target.calls[0]  # the failed call failed each of its messages
    for key in range(5):  # G4 across batches and retries
        sent = [m.body for m in target.messages if m.key == f"k{key}"]
        numbers = [int(b.split(b":")[1].rstrip(b"}")) for b in sent]
        assert numbers == sorted(numbers)
        assert len(numbers) == 40


class SizedBatchRecorder(BatchRecorder):
    """A batch target that takes at most seven messages a call."""

    batch_size = 7


def test_a_batch_target_gets_calls_of_its_own_batch_size(db: sa.Engine, dsn: str) -> None:
    target = SizedBatchRecorder()
    with Session(db) as session:
        handles = outbox.publish.publish_many(
            session, [Publish("orders", {"n": n}) for n in range(200)]
        )
        session.commit()
    with running_relay(registry_for(target), dsn):
        wait_for(lambda: len(target.messages) == 200, 30, "every message")
        wait_for(lambda: scalar(db, "SELECT count(*) FROM outbox_jobs") == 0, 10, "completions")
    assert max(target.calls) == 7  # a claim's messages in calls of seven at most
    assert sorted(m.uuid for m in target.messages) == sorted(h.uuid for h in handles)


def test_a_message_with_integers_beyond_64_bits_is_published_exactly(
    db: sa.Engine, dsn: str, target: Recorder
) -> None:
    """jsonb keeps any integer; the relay's fast JSON reads and writes it as the standard
    library does (outbox/fastjson.py)."""
    with Session(db) as session:
        handle = outbox.publish(session, "orders", {"big": 2**70 + 1, "n": -(2**64), "x": 1.5})
        session.commit()
    with running_relay(registry_for(target), dsn, concurrency=2):
        wait_for(lambda: len(target.messages) == 1, 20, "the message")
    [message] = target.messages
    assert message.uuid == handle.uuid
    # jsonb's order of keys: shorter first
    assert message.body == b'{"n":-18446744073709551616,"x":1.5,"big":1180591620717411303425}'
