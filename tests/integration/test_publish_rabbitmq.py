"""The RabbitMQ target against the machine's RabbitMQ (127.0.0.1:5672, guest/guest): each
message arrives once under its job uuid, persistent, body and headers intact, in order per
key; an unroutable message ends dead, a broker that is down fails publishes quickly and the
next publish after it is back reconnects; and end to end through relays, a broker stopped for
20 s loses nothing, and a relay killed between the broker's confirm and the job's completion
publishes again under the same id, which the consumer's inbox applies once.

Each test declares a durable queue of its own and deletes it after."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import aio_pika
import pytest
import sqlalchemy as sa
import tenacity
from sqlalchemy.orm import Session

import outbox
from outbox.errors import ConfigurationError
from outbox.publish import Delivery, Limits, Message, PublishFailed, PublishRejected, RabbitMQ
from tests.integration.helpers import history
from tests.integration.relay_harness import live_jobs, running_relay, wait_for

#: These tests stop the machine's one broker (rabbitmqctl stop_app): every test that uses it
#: runs alone among them (tests/conftest.py's exclusive_service), never beside an outage.
pytestmark = [pytest.mark.timeout(120), pytest.mark.exclusive("rabbitmq")]

ROOT = Path(__file__).resolve().parents[2]
URL = os.environ.get("OUTBOX_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
LIMITS = Limits(lease_seconds=30, longest_backoff_seconds=60)


@dataclasses.dataclass(frozen=True)
class Received:
    message_id: str | None
    body: bytes
    headers: dict[str, Any]
    content_type: str | None
    delivery_mode: int | None
    type: str | None
    timestamp: datetime | None

    @property
    def n(self) -> int:
        return int(json.loads(self.body)["n"])


async def _on_channel(work: Any) -> Any:
    connection = await aio_pika.connect(URL, timeout=10)
    async with connection:
        return await work(await connection.channel())


def declare(queue: str) -> None:
    async def work(channel: aio_pika.abc.AbstractChannel) -> None:
        await channel.declare_queue(queue, durable=True)

    asyncio.run(_on_channel(work))


def delete(queue: str) -> None:
    async def work(channel: aio_pika.abc.AbstractChannel) -> None:
        await channel.queue_delete(queue)

    asyncio.run(_on_channel(work))


def read(queue: str, count: int, timeout: float = 30) -> list[Received]:
    """``count`` messages from ``queue``, in queue order; then the queue must be empty."""

    async def work(channel: aio_pika.abc.AbstractChannel) -> list[Received]:
        declared = await channel.declare_queue(queue, durable=True, passive=True)
        got: list[Received] = []
        deadline = time.monotonic() + timeout
        while len(got) < count:
            message = await declared.get(no_ack=True, fail=False)
            if message is None:
                assert time.monotonic() < deadline, f"{len(got)} of {count} messages arrived"
                await asyncio.sleep(0.02)
                continue
            got.append(
                Received(
                    message.message_id,
                    message.body,
                    dict(message.headers),
                    message.content_type,
                    message.delivery_mode,
                    message.type,
                    message.timestamp,
                )
            )
        left = await declared.get(no_ack=True, fail=False)
        assert left is None, f"a message beyond the {count} expected: {left!r}"
        return got

    result: list[Received] = asyncio.run(_on_channel(work))
    return result


@pytest.fixture
def queue() -> Iterator[str]:
    name = f"outbox-test-{uuid4().hex[:12]}"
    declare(name)
    yield name
    delete(name)


def message(n: int, key: str | None = "order:1", **headers: str) -> Message:
    return Message(
        uuid=uuid4(), destination="orders", body=json.dumps({"n": n, "note": "é 1.50"}).encode(),
        key=key, event="order.paid", headers=headers, attempt=1,
        enqueued_at=datetime(2026, 12, 4, 12, 0, 0, tzinfo=UTC),
    )  # fmt: skip


@contextlib.contextmanager
def target_for(queue: str, **options: Any) -> Iterator[RabbitMQ]:
    target = RabbitMQ(URL, routing_key=queue, **options)
    target.start(LIMITS)
    try:
        yield target
    finally:
        target.close()


def rabbitmqctl(*args: str) -> None:
    done = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"rabbitmqctl {' '.join(args)}: {done.stdout}{done.stderr}"


def broker_answers() -> bool:
    async def connect() -> None:
        connection = await aio_pika.connect(URL, timeout=2)
        await connection.close()

    try:
        asyncio.run(connect())
    except Exception:  # down: any client error will do
        return False
    return True


@contextlib.contextmanager
def broker_stopped() -> Iterator[None]:
    """The RabbitMQ application stopped (the Erlang node stays up), started again after."""
    rabbitmqctl("stop_app")
    try:
        yield
    finally:
        rabbitmqctl("start_app")
        rabbitmqctl("await_startup")
        wait_for(broker_answers, 60, "RabbitMQ to answer again")


# --- the target alone -----------------------------------------------------------------------


def test_messages_arrive_once_each_under_their_uuid_intact_and_persistent(queue: str) -> None:
    messages = [message(n, key=f"order:{n % 7}", tenant="t1") for n in range(300)]
    with target_for(queue) as target, ThreadPoolExecutor(16) as pool:
        deliveries = list(pool.map(target.publish, messages))
    assert {str(d) for d in deliveries} == {
        f"delivered: confirmed by RabbitMQ: exchange '' routing key '{queue}'"
    }
    got = {r.message_id: r for r in read(queue, len(messages))}
    assert sorted(got) == sorted(m.id for m in messages)
    for sent in messages:
        arrived = got[sent.id]
        assert arrived.body == sent.body
        assert arrived.headers == {
            "tenant": "t1", "outbox-key": sent.key, "outbox-event": "order.paid"
        }  # fmt: skip
        assert arrived.content_type == "application/json"
        assert arrived.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        assert arrived.type == "order.paid"
        assert arrived.timestamp == sent.enqueued_at


def test_a_batch_is_answered_message_by_message_in_its_order(queue: str) -> None:
    messages = [message(n, key=f"order:{n}") for n in range(100)]
    with target_for(queue) as target:
        answers = target.publish_many(messages)
        assert target.publish_many([]) == []
    assert [str(a) for a in answers] == [
        f"delivered: confirmed by RabbitMQ: exchange '' routing key '{queue}'"
    ] * 100
    assert sorted(r.message_id or "" for r in read(queue, 100)) == sorted(m.id for m in messages)


def test_a_batch_that_cannot_be_sent_answers_each_message_with_the_failure(queue: str) -> None:
    with target_for(f"{queue}-nowhere") as target:
        refused = target.publish_many([message(1), message(2)])
    assert [type(a) for a in refused] == [PublishRejected, PublishRejected]
    down = RabbitMQ("amqp://guest:guest@127.0.0.1:1/%2F", routing_key="a")
    try:
        failed = down.publish_many([message(1), message(2), message(3)])
    finally:
        down.close()
    assert [type(a) for a in failed] == [PublishFailed] * 3
    assert all(str(a).startswith("cannot publish through RabbitMQ") for a in failed)


def test_a_message_without_key_or_event_carries_no_such_header(queue: str) -> None:
    sent = dataclasses.replace(message(1, key=None), event=None)
    with target_for(queue) as target:
        target.publish(sent)
    (arrived,) = read(queue, 1)
    assert arrived.headers == {}
    assert arrived.type is None


def test_same_key_messages_published_in_order_arrive_in_order(queue: str) -> None:
    sent = [message(n, key="order:1") for n in range(50)]
    with target_for(queue) as target:
        for one in sent:
            target.publish(one)
    assert [r.message_id for r in read(queue, 50)] == [m.id for m in sent]


def test_an_unroutable_message_is_rejected_not_delivered(queue: str) -> None:
    with target_for(f"{queue}-nowhere") as target:
        with pytest.raises(PublishRejected) as refused:
            target.publish(message(1))
        # the channel is still good for the next message
        with pytest.raises(PublishRejected):
            target.publish(message(2))
    assert refused.value.status == 312
    assert refused.value.detail == (
        "unroutable: RabbitMQ returned the message (312 NO_ROUTE): no queue is bound for "
        f"exchange '' routing key '{queue}-nowhere'"
    )


def test_a_nacked_message_is_a_failure_retried_not_a_rejection(queue: str) -> None:
    full = f"{queue}-full"

    async def declare_full(channel: aio_pika.abc.AbstractChannel) -> None:
        arguments = {"x-max-length": 1, "x-overflow": "reject-publish"}
        await channel.declare_queue(full, durable=True, arguments=arguments)

    asyncio.run(_on_channel(declare_full))
    try:
        with target_for(full) as target:
            target.publish(message(1))
            with pytest.raises(PublishFailed) as failed:
                target.publish(message(2))
            assert failed.value.detail == (
                f"RabbitMQ refused the message (Nack) for exchange '' routing key '{full}'"
            )
    finally:
        delete(full)


def test_a_named_exchange_routes_by_its_bindings(queue: str) -> None:
    exchange = f"{queue}-x"

    async def bind(channel: aio_pika.abc.AbstractChannel) -> None:
        declared = await channel.declare_exchange(exchange, aio_pika.ExchangeType.DIRECT)
        bound = await channel.declare_queue(queue, durable=True, passive=True)
        await bound.bind(declared, routing_key="paid")

    asyncio.run(_on_channel(bind))
    try:
        sent = message(1)
        with target_for("paid", exchange=exchange) as target:
            delivery = target.publish(sent)
        with (
            target_for("refunded", exchange=exchange) as elsewhere,
            pytest.raises(PublishRejected, match="routing key 'refunded'"),
        ):
            elsewhere.publish(message(2))
        assert delivery.detail == f"confirmed by RabbitMQ: exchange '{exchange}' routing key 'paid'"
        assert [r.message_id for r in read(queue, 1)] == [sent.id]
    finally:
        asyncio.run(_on_channel(lambda channel: channel.exchange_delete(exchange)))


def test_a_missing_exchange_fails_naming_it_and_is_retried() -> None:
    target = RabbitMQ(URL, exchange="outbox-test-no-such-exchange", routing_key="a")
    try:
        with pytest.raises(PublishFailed, match="no exchange 'outbox-test-no-such-exchange'"):
            target.publish(message(1))
    finally:
        target.close()


def test_a_broker_that_is_not_there_fails_quickly() -> None:
    target = RabbitMQ("amqp://guest:guest@127.0.0.1:1/%2F", routing_key="a", timeout=5)
    try:
        started = time.monotonic()
        with pytest.raises(PublishFailed) as failed:
            target.publish(message(1))
        assert time.monotonic() - started < 2
        assert failed.value.detail.startswith(
            "cannot publish through RabbitMQ at amqp://guest@127.0.0.1:1/%2F: "
        )
        assert "guest:guest" not in failed.value.detail
    finally:
        target.close()


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"url": "http://127.0.0.1:5672/"}, "is not an AMQP URL"),
        ({"url": "amqp://"}, "is not an AMQP URL"),
        ({"url": "amqp://u:secret@127.0.0.1:99999/"}, "is not an AMQP URL"),
        ({"url": ""}, "must be an amqp:// URL"),
        ({"routing_key": ""}, "routing_key is empty"),
        ({"routing_key": "q" * 256}, "at most 255 bytes"),
        ({"routing_key": "q\ud800"}, "routing_key is not valid text"),
        ({"exchange": "bad name!"}, "is not an exchange name"),
        ({"timeout": 0}, "timeout must be seconds above 0"),
        ({"timeout": True}, "timeout must be seconds above 0"),
        ({"timeout": float("nan")}, "timeout must be seconds above 0"),
        ({"timeout": float("inf")}, "timeout must be seconds above 0"),
    ],
)
def test_bad_constructor_input_is_refused_with_one_clear_error(
    options: dict[str, Any], error: str
) -> None:
    arguments: dict[str, Any] = {"url": URL, "routing_key": "orders", **options}
    with pytest.raises(ConfigurationError, match=error) as refused:
        RabbitMQ(arguments.pop("url"), **arguments)
    assert "secret" not in str(refused.value)


def test_without_aio_pika_the_target_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['aio_pika'] = None\n"
        "from outbox.publish import RabbitMQ\n"
        "try:\n    RabbitMQ('amqp://127.0.0.1/', routing_key='q')\n"
        "except Exception as exc:\n    print(type(exc).__name__, exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.stdout.strip() == (
        "ConfigurationError this target needs the 'aio-pika' client: "
        "pip install 'outbox-relay[rabbitmq]'"
    ), done.stderr


def test_a_stopped_broker_fails_publishes_quickly_and_publishes_reconnect_once_it_is_back(
    queue: str,
) -> None:
    with target_for(queue, timeout=5) as target:
        first = message(1)
        target.publish(first)
        with broker_stopped():
            started = time.monotonic()
            for n in range(3):
                with pytest.raises(PublishFailed):
                    target.publish(message(n))
            assert time.monotonic() - started < 10
        again = message(2)
        # For a second after a failed connection attempt, publishes fail at once without
        # sending (the broker came back quicker than that, sometimes): then one reconnects.
        delivered = wait_for(lambda: _published(target, again), 10, "a publish after the restart")
        assert delivered.outcome == "delivered"
    assert [r.message_id for r in read(queue, 2)] == [first.id, again.id]


def _published(target: RabbitMQ, sent: Message) -> Delivery | None:
    try:
        return target.publish(sent)
    except PublishFailed:
        return None


# --- end to end through relays --------------------------------------------------------------


def registry_for(queue: str) -> outbox.Registry:
    registry = outbox.Registry()
    registry.destination(
        "orders", RabbitMQ(URL, routing_key=queue, timeout=5),
        max_attempts=100, retry=tenacity.wait_fixed(0.5),
    )  # fmt: skip
    return registry


def publish(engine: sa.Engine, messages: list[tuple[int, str | None]]) -> list[UUID]:
    with Session(engine) as session:
        uuids = [
            outbox.publish.publish(
                session, "orders", {"n": n}, key=key, event="order.paid", headers={"tenant": "t1"}
            ).uuid
            for n, key in messages
        ]
        session.commit()
    return uuids


def reasons(engine: sa.Engine, uuid: UUID) -> list[tuple[str, str | None]]:
    """Each history row's event with its reason, or for a failure its error."""
    return [
        (row.event, row.reason if row.reason is not None else row.error and str(row.error))
        for row in history(engine, uuid)
    ]


def test_a_relay_delivers_each_message_once_in_key_order_and_history_keeps_the_answer(
    db: sa.Engine, queue: str
) -> None:
    uuids = publish(db, [(n, f"account:{n % 5}") for n in range(200)])
    with running_relay(registry_for(queue), str(db.url)):
        wait_for(lambda: live_jobs(db) == 0, 30, "every message delivered")
    got = read(queue, 200)
    assert sorted(r.message_id or "" for r in got) == sorted(str(u) for u in uuids)
    for key in range(5):
        arrived = [r.n for r in got if r.headers["outbox-key"] == f"account:{key}"]
        assert arrived == list(range(key, 200, 5))
    assert all(r.headers["tenant"] == "t1" and r.body == b'{"n":%d}' % r.n for r in got)
    assert (
        "succeeded", f"delivered: confirmed by RabbitMQ: exchange '' routing key '{queue}'"
    ) in reasons(db, uuids[0])  # fmt: skip


def test_an_unroutable_message_ends_dead_with_the_reason_in_history(
    db: sa.Engine, queue: str
) -> None:
    (uuid,) = publish(db, [(1, None)])
    with running_relay(registry_for(f"{queue}-nowhere"), str(db.url)):
        wait_for(lambda: "dead" in dict(reasons(db, uuid)), 30, "the job dead")
    events = reasons(db, uuid)
    assert [event for event, _ in events][-1] == "dead"
    assert any("312 NO_ROUTE" in (reason or "") for _, reason in events), events


def test_a_broker_stopped_for_20_seconds_loses_nothing(db: sa.Engine, queue: str) -> None:
    with running_relay(registry_for(queue), str(db.url)):
        with broker_stopped():
            back_at = time.monotonic() + 20
            uuids = publish(db, [(n, f"account:{n % 4}") for n in range(40)])
            wait_for(
                lambda: any(event == "failed" for event, _ in reasons(db, uuids[0])),
                15, "a failed publish",
            )  # fmt: skip
            assert live_jobs(db) == 40
            wait_for(lambda: time.monotonic() >= back_at, 25, "20 seconds of outage")
        # the broker answers again
        wait_for(lambda: live_jobs(db) == 0, 30, "every message delivered after the outage")
    got = read(queue, 40)
    assert sorted(r.message_id or "" for r in got) == sorted(str(u) for u in uuids)
    for key in range(4):
        assert [r.n for r in got if r.headers["outbox-key"] == f"account:{key}"] == list(
            range(key, 40, 4)
        )
    failures = [reason or "" for event, reason in reasons(db, uuids[0]) if event == "failed"]
    assert any("cannot publish through RabbitMQ" in reason for reason in failures), failures


@pytest.fixture
def effects(db: sa.Engine) -> sa.Engine:
    with db.begin() as conn:
        conn.execute(sa.text("DROP TABLE IF EXISTS rabbitmq_effects"))
        conn.execute(sa.text("CREATE TABLE rabbitmq_effects (message_id text, n int)"))
    return db


def test_a_relay_killed_after_the_confirm_publishes_again_under_the_same_id_applied_once(
    effects: sa.Engine, dsn: str, queue: str, tmp_path: Path
) -> None:
    relays: list[subprocess.Popen[bytes]] = []
    marker = tmp_path / "killed"

    def relay() -> subprocess.Popen[bytes]:
        log = (tmp_path / f"relay-{len(relays)}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "outbox", "--dsn", dsn, "relay", "--app",
             "tests.integration.rabbitmq_app:registry", "--metrics-addr", "off"],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "TEST_RABBITMQ_URL": URL, "TEST_RABBITMQ_QUEUE": queue,
                 "TEST_RABBITMQ_MARKER": str(marker), "OUTBOX_LEASE": "3s",
                 "OUTBOX_POLL_INTERVAL": "0.2s", "OUTBOX_RESCUE_INTERVAL": "0.5s"},
        )  # fmt: skip
        relays.append(proc)
        return proc

    try:
        uuids = publish(effects, [(n, "account:1") for n in range(5)])
        first = relay()
        assert first.wait(30) == -signal.SIGKILL, "the relay was not killed after a confirm"
        assert marker.read_text() == str(uuids[0])
        relay()
        wait_for(lambda: live_jobs(effects) == 0, 40, "every message delivered after the kill")
        got = read(queue, 6)
        ids = [r.message_id for r in got]
        assert ids[:2] == [str(uuids[0])] * 2  # sent again, under the same id
        assert ids[2:] == [str(u) for u in uuids[1:]]
        for received in got:  # the consumer: the inbox and the effect in one transaction
            with Session(effects) as session:
                if outbox.inbox(session, "billing", received.message_id or ""):
                    session.execute(
                        sa.text("INSERT INTO rabbitmq_effects VALUES (:id, :n)"),
                        {"id": received.message_id, "n": received.n},
                    )
                session.commit()
        with effects.connect() as conn:
            rows = conn.execute(sa.text("SELECT message_id, n FROM rabbitmq_effects ORDER BY n"))
            assert [tuple(row) for row in rows] == [(str(u), n) for n, u in enumerate(uuids)]
    finally:
        for proc in relays:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def publisher_connections() -> int:
    done = subprocess.run(
        ["rabbitmqctl", "list_connections", "client_properties", "--quiet", "--no-table-headers"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return done.stdout.count('{"connection_name","outbox publisher"}')


def test_publishes_from_many_threads_share_one_connection(queue: str) -> None:
    before = publisher_connections()
    with target_for(queue) as target, ThreadPoolExecutor(16) as pool:
        list(pool.map(target.publish, [message(n) for n in range(200)]))
        assert publisher_connections() == before + 1
    assert publisher_connections() == before
    read(queue, 200)
