"""The consumers docs/howto/consume-messages.md shows work: run against the real RabbitMQ and
NATS, librdkafka's mock cluster and a local HTTP server, each applies a message that arrives
twice under one id once, and acknowledges both copies.

The page's first block (``receive``: the inbox and the effect in one transaction) runs as
written; each broker's block is the page's text, its ``__main__`` part left out, called here
with a queue, stream or port of the test's own. Messages are sent by outbox's own targets, the
second copy under the same id as a relay rescued after a crash sends it.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest
import sqlalchemy as sa

from outbox.publish import Limits, Message
from tests.docs.markdown import blocks
from tests.integration.relay_harness import scalar, wait_for

PAGE = Path(__file__).parents[2] / "docs" / "howto" / "consume-messages.md"
RABBITMQ = os.environ.get("OUTBOX_TEST_RABBITMQ", "amqp://guest:guest@127.0.0.1:5672/%2F")
NATS = os.environ.get("OUTBOX_TEST_NATS", "nats://127.0.0.1:4222")
LIMITS = Limits(lease_seconds=30, longest_backoff_seconds=3600)


def _python_blocks() -> list[str]:
    return [b.text for b in blocks(PAGE) if b.lang == "python"]


def _block_defining(name: str) -> str:
    [text] = [t for t in _python_blocks() if f"def {name}(" in t]
    return text


@pytest.fixture
def page(db: sa.Engine, dsn: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """The page's names after its first block ran: ``receive`` and its engine, on the test
    database; ``received`` records what each call of ``receive`` answered."""
    monkeypatch.setenv("OUTBOX_DSN", dsn)
    namespace: dict[str, Any] = {"__name__": "how_to"}
    exec(compile(_python_blocks()[0], str(PAGE), "exec"), namespace)
    with db.begin() as conn:
        conn.execute(sa.text("TRUNCATE outbox_inbox, balances"))
    documented, received = namespace["receive"], []

    def receive(message_id: str, body: bytes) -> bool:
        applied = documented(message_id, body)
        received.append((message_id, applied))
        return bool(applied)

    namespace["receive"], namespace["received"] = receive, received
    try:
        yield namespace
    finally:
        namespace["engine"].dispose()
        with db.begin() as conn:
            conn.execute(sa.text("DROP TABLE balances"))


def load(page: dict[str, Any], name: str) -> Callable[..., Any]:
    """A broker's consumer as the page defines it (its ``__main__`` part does not run)."""
    exec(compile(_block_defining(name), str(PAGE), "exec"), page)
    return page[name]  # type: ignore[no-any-return]


def message(destination: str, message_id: uuid.UUID, cents: int, key: str = "acct-7") -> Message:
    body = f'{{"account": "{key}", "cents": {cents}}}'.encode()
    return Message(message_id, destination, body, key, "payment.received", {}, 1, datetime.now(UTC))


def balance(engine: sa.Engine, account: str = "acct-7") -> Any:
    return scalar(engine, "SELECT cents FROM balances WHERE account = :a", a=account)


def twice_and_another(destination: str) -> tuple[list[Message], list[tuple[str, bool]]]:
    """A message, the same message again (the re-publish), and a second message."""
    first, second = uuid.uuid4(), uuid.uuid4()
    sent = [message(destination, first, 1250), message(destination, first, 1250),
            message(destination, second, 250)]  # fmt: skip
    return sent, [(str(first), True), (str(first), False), (str(second), True)]


def _consuming(run: Callable[[], Any]) -> tuple[threading.Thread, Callable[[], None]]:
    """Run an asyncio consumer in a thread of its own until the returned stop is called."""
    loop = asyncio.new_event_loop()
    task: list[asyncio.Task[Any]] = []

    def main() -> None:
        async def go() -> None:
            task.append(asyncio.current_task())  # type: ignore[arg-type]
            await run()

        try:
            loop.run_until_complete(go())
        except asyncio.CancelledError:
            pass
        finally:
            loop.close()

    thread = threading.Thread(target=main, daemon=True)
    thread.start()

    def stop() -> None:
        wait_for(lambda: task, 10, "the consumer to start")
        loop.call_soon_threadsafe(task[0].cancel)
        thread.join(15)
        assert not thread.is_alive(), "the consumer did not stop"

    return thread, stop


@pytest.mark.exclusive("rabbitmq")  # never beside test_publish_rabbitmq's broker outage
def test_the_rabbitmq_consumer_applies_a_republished_message_once(
    page: dict[str, Any], db: sa.Engine
) -> None:
    aio_pika = pytest.importorskip("aio_pika")
    from outbox.publish import RabbitMQ

    queue = f"outbox_test_consume_{secrets.token_hex(4)}"

    async def declare(delete: bool = False) -> None:
        connection = await aio_pika.connect(RABBITMQ)
        async with connection:
            channel = await connection.channel()
            if delete:
                await channel.queue_delete(queue)
            else:
                await channel.declare_queue(queue, durable=True)

    def answers() -> bool:
        try:
            asyncio.run(declare())
        except Exception:  # down (a test that stops the broker may be running): any error
            return False
        return True

    wait_for(answers, 60, "RabbitMQ to answer")
    target = RabbitMQ(RABBITMQ, routing_key=queue)
    target.start(LIMITS)
    try:
        sent, expected = twice_and_another("orders")
        for each in sent:
            assert target.publish(each).outcome == "delivered"
        consume = load(page, "consume_rabbitmq")
        _, stop = _consuming(lambda: consume(RABBITMQ, queue))
        try:
            wait_for(lambda: len(page["received"]) == 3, 20, "three deliveries received")
        finally:
            stop()
    finally:
        target.close()
    try:
        assert page["received"] == expected
        assert balance(db) == 1500
        assert scalar(db, "SELECT count(*) FROM outbox_inbox") == 2

        async def left() -> int:
            connection = await aio_pika.connect(RABBITMQ)
            async with connection:
                channel = await connection.channel()
                declared = await channel.declare_queue(queue, passive=True)
                return int(declared.declaration_result.message_count)

        assert asyncio.run(left()) == 0  # every copy acknowledged, the duplicate too
    finally:
        asyncio.run(declare(delete=True))


def test_the_nats_consumer_applies_a_message_republished_after_the_window_once(
    page: dict[str, Any], db: sa.Engine
) -> None:
    nats = pytest.importorskip("nats")
    from outbox.publish import NatsJetStream

    tag = secrets.token_hex(4)
    stream, subject = f"OUTBOX_TEST_CONSUME_{tag}", f"outbox_test_consume_{tag}.orders"
    window = 0.2  # seconds: JetStream's own dedupe, which a late re-publish outlives

    async def admin(delete: bool = False) -> None:
        nc = await nats.connect(NATS)
        try:
            js = nc.jetstream()
            if delete:
                await js.delete_stream(stream)
            else:
                await js.add_stream(name=stream, subjects=[subject], duplicate_window=window)
        finally:
            await nc.close()

    asyncio.run(admin())
    target = NatsJetStream(NATS, subject=subject)
    try:
        target.start(LIMITS)
        sent, expected = twice_and_another("feed")
        assert target.publish(sent[0]).outcome == "delivered"
        started = time.monotonic()
        assert target.publish(sent[1]).outcome == "duplicate"  # within the window: dropped
        time.sleep(max(0.0, window * 2 - (time.monotonic() - started)))  # the window lapses
        assert target.publish(sent[1]).outcome == "delivered"  # a late re-publish gets in
        assert target.publish(sent[2]).outcome == "delivered"
        consume = load(page, "consume_nats")
        _, stop = _consuming(lambda: consume(NATS, subject, durable="billing"))
        try:
            wait_for(lambda: len(page["received"]) == 3, 20, "three deliveries received")

            async def pending() -> int:
                nc = await nats.connect(NATS)
                try:
                    info = await nc.jetstream().consumer_info(stream, "billing")
                    return int(info.num_ack_pending + info.num_pending)
                finally:
                    await nc.close()

            wait_for(lambda: asyncio.run(pending()) == 0, 10, "every copy acknowledged")
        finally:
            stop()
    finally:
        target.close()
        asyncio.run(admin(delete=True))
    assert page["received"] == expected
    assert balance(db) == 1500


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_the_webhook_receiver_applies_a_redelivered_message_once_and_refuses_bad_signatures(
    page: dict[str, Any], db: sa.Engine
) -> None:
    pytest.importorskip("aiohttp")
    from outbox.publish import Webhook

    app = load(page, "webhook_app")
    server = make_server("127.0.0.1", 0, app, handler_class=_Quiet)
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    url = f"http://127.0.0.1:{server.server_port}/hooks"
    target = Webhook(url, secret=page["SECRETS"], allow_private=True)
    try:
        target.start(LIMITS)
        sent, expected = twice_and_another("partner")
        for each in sent:
            assert str(target.publish(each)).endswith("HTTP 204"), "a duplicate is a 2xx too"
        forged = _post(url, sent[0].body, {
            "webhook-id": str(uuid.uuid4()), "webhook-timestamp": str(int(time.time())),
            "webhook-signature": "v1,AAAA"})  # fmt: skip
        unsigned = _post(url, sent[0].body, {})
    finally:
        target.close()
        server.shutdown()
        server.server_close()
    assert page["received"] == expected
    assert balance(db) == 1500
    assert forged[0] == 401
    assert "no webhook-signature matches" in forged[1]
    assert unsigned[0] == 401
    assert "header webhook-id, webhook-timestamp, webhook-signature missing" in unsigned[1]


def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
    """POST with the standard library: the status and the text of the answer."""
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return int(answer.status), answer.read().decode()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read().decode()


class _Stop(Exception):
    """Raised from a consumer's poll to end the page's endless loop."""


def test_the_kafka_consumer_applies_a_republished_message_once_and_commits_both_offsets(
    page: dict[str, Any], db: sa.Engine
) -> None:
    confluent_kafka = pytest.importorskip("confluent_kafka")
    from outbox.publish import Kafka
    from tests.integration.kafka_mock import MockCluster

    cluster = MockCluster(brokers=3)
    topic = f"orders-{secrets.token_hex(6)}"
    cluster.create_topic(topic, partitions=1)  # one key: one partition, in order
    stop = threading.Event()

    class Consumer(confluent_kafka.Consumer):  # type: ignore[misc,name-defined]
        """The page's Consumer, whose poll ends the loop once the test is done."""

        def poll(self, timeout: float) -> Any:
            if stop.is_set():
                raise _Stop
            return super().poll(min(timeout, 0.2))

    target = Kafka(cluster.bootstrap, topic=topic, timeout=5)
    try:
        target.start(LIMITS)
        sent, expected = twice_and_another("stream")
        for each in sent:
            assert target.publish(each).outcome == "delivered"
        consume = load(page, "consume_kafka")
        page["Consumer"] = Consumer
        errors: list[BaseException] = []

        def run() -> None:
            try:
                consume(cluster.bootstrap, topic)
            except _Stop:
                pass
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        consuming = threading.Thread(target=run, daemon=True)
        consuming.start()
        try:
            wait_for(lambda: len(page["received"]) == 3 or errors, 30, "three deliveries")
        finally:
            stop.set()
            consuming.join(15)
        assert not errors, errors
        checker = confluent_kafka.Consumer(
            {"bootstrap.servers": cluster.bootstrap, "group.id": "billing"}
        )
        try:
            [committed] = checker.committed([confluent_kafka.TopicPartition(topic, 0)], 10)
        finally:
            checker.close()
    finally:
        target.close()
        cluster.close()
    assert page["received"] == expected
    assert balance(db) == 1500
    assert committed.offset == 3  # the duplicate's offset committed too: it is not read again
