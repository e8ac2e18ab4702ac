"""The Kafka target against librdkafka's mock cluster (tests/integration/kafka_mock.py): what
it publishes arrives once each under its job uuid, bodies, keys and headers intact, in each
key's order; a cluster that is down fails publishes quickly and they are delivered once it is
back; refusals end the message dead; end to end through relays, a relay killed after Kafka's
acknowledgement re-publishes under the same id and the consumer's inbox applies it once."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import confluent_kafka
import pytest
import sqlalchemy as sa
import tenacity
from sqlalchemy.orm import Session

import outbox
from outbox.errors import ConfigurationError
from outbox.publish import Kafka, Limits, Message, PublishFailed, PublishRejected

from .helpers import history
from .kafka_mock import INIT_PRODUCER_ID, MockCluster, read_topic
from .relay_harness import live_jobs, running_relay, wait_for

ROOT = Path(__file__).resolve().parents[2]
LIMITS = Limits(lease_seconds=30, longest_backoff_seconds=3600)
#: Kafka error codes the mock brokers answer with.
MSG_SIZE_TOO_LARGE, INVALID_RECORD, CLUSTER_AUTHORIZATION_FAILED = 10, 87, 31


@pytest.fixture(scope="module")
def cluster() -> Iterator[MockCluster]:
    made = MockCluster(brokers=3)
    yield made
    made.close()


@pytest.fixture
def topic(cluster: MockCluster) -> str:
    name = f"orders-{uuid.uuid4().hex[:12]}"
    cluster.create_topic(name, partitions=4)
    return name


@pytest.fixture
def target(cluster: MockCluster, topic: str) -> Iterator[Kafka]:
    made = Kafka(cluster.bootstrap, topic=topic, timeout=2)
    made.start(LIMITS)
    yield made
    made.close()


def message(
    body: Any, key: str | None = "k", event: str | None = "order.paid", **headers: str
) -> Message:
    return Message(
        uuid=uuid.uuid4(), destination="stream", body=json.dumps(body).encode(), key=key,
        event=event, headers=headers, attempt=1, enqueued_at=datetime.datetime.now(datetime.UTC),
    )  # fmt: skip


def headers_of(record: confluent_kafka.Message) -> dict[str, str]:
    return {name: value.decode() for name, value in record.headers() or []}


def test_messages_arrive_once_each_under_their_uuid_in_key_order(
    cluster: MockCluster, topic: str, target: Kafka
) -> None:
    keys = [f"order:{n}" for n in range(8)]
    sent: dict[str, list[Message]] = {
        key: [
            message({"key": key, "seq": seq, "amount": 1.10}, key=key, tenant="t1")
            for seq in range(25)
        ]
        for key in keys
    }

    def publish_in_order(key: str) -> list[str]:
        return [str(target.publish(m)) for m in sent[key]]

    with ThreadPoolExecutor(len(keys)) as pool:  # the keys concurrently, each key in order
        answers = [a for answer in pool.map(publish_in_order, keys) for a in answer]
    assert all(a.startswith(f"delivered: {topic} partition ") for a in answers), answers[:3]

    records = read_topic(cluster.bootstrap, topic, 200, timeout=20)
    assert len(records) == 200
    by_id = {m.id: m for messages in sent.values() for m in messages}
    seen = [headers_of(r)["outbox-id"] for r in records]
    assert sorted(seen) == sorted(by_id), "each message arrives once, under its job uuid"
    partitions: dict[str, set[int]] = defaultdict(set)
    order: dict[str, list[int]] = defaultdict(list)
    for record in records:
        headers = headers_of(record)
        sent_message = by_id[headers["outbox-id"]]
        assert record.value() == sent_message.body, "the body's bytes as the app gave them"
        assert record.key() == sent_message.key.encode()
        assert headers == {
            "tenant": "t1", "outbox-key": sent_message.key, "outbox-event": "order.paid",
            "outbox-id": sent_message.id, "content-type": "application/json",
        }  # fmt: skip
        key = headers["outbox-key"]
        partitions[key].add(record.partition())
        order[key].append(json.loads(record.value())["seq"])
    assert all(len(p) == 1 for p in partitions.values()), "one key, one partition"
    assert all(seqs == list(range(25)) for seqs in order.values()), "each key in its order"


def test_a_message_without_key_or_event_carries_neither(
    cluster: MockCluster, topic: str, target: Kafka
) -> None:
    sent = message([1, "two", None], key=None, event=None)
    target.publish(sent)
    [record] = read_topic(cluster.bootstrap, topic, 1, timeout=10)
    assert record.key() is None
    assert record.value() == b'[1, "two", null]'
    assert headers_of(record) == {"outbox-id": sent.id, "content-type": "application/json"}


def test_a_publish_while_the_cluster_is_down_fails_quickly_then_the_next_is_delivered(
    cluster: MockCluster, topic: str
) -> None:
    # librdkafka reconnects within reconnect.backoff.max.ms of the brokers' return (10 s by
    # default, the backoff doubling while they are down): held to 200 ms here, so that the
    # next publish, with its 2 s timeout, finds them back even on a loaded machine.
    target = Kafka(cluster.bootstrap, topic=topic, timeout=2, **{"reconnect.backoff.max.ms": 200})
    target.start(LIMITS)
    try:
        before = target.publish(message({"before": True}))
        cluster.down()
        try:
            started = time.monotonic()
            with pytest.raises(PublishFailed, match="timed out"):
                target.publish(message({"during": True}))
            assert time.monotonic() - started < 2 + 5, "bounded by the target's timeout"
        finally:
            cluster.up()
        after = message({"after": True})
        assert str(target.publish(after)).startswith("delivered")
    finally:
        target.close()
    records = read_topic(cluster.bootstrap, topic, 2, timeout=10)
    assert [json.loads(r.value()) for r in records] == [{"before": True}, {"after": True}]
    assert str(before).startswith("delivered")


def test_a_message_kafka_refuses_is_rejected_and_the_next_is_delivered(
    cluster: MockCluster, topic: str, target: Kafka
) -> None:
    for code, name in (
        (MSG_SIZE_TOO_LARGE, "MSG_SIZE_TOO_LARGE"),
        (INVALID_RECORD, "INVALID_RECORD"),
    ):
        cluster.fail_produce(code)
        with pytest.raises(PublishRejected, match=f"Kafka refused the message: {name}"):
            target.publish(message({"refused": name}))
        assert str(target.publish(message({"then": name}))).startswith("delivered")


def test_a_message_larger_than_the_producer_sends_is_rejected(
    cluster: MockCluster, topic: str
) -> None:
    target = Kafka(cluster.bootstrap, topic=topic, timeout=2, message_max_bytes=10_000)
    try:
        with pytest.raises(PublishRejected, match="MSG_SIZE_TOO_LARGE"):
            target.publish(message({"pad": "x" * 20_000}))
        assert str(target.publish(message({"small": 1}))).startswith("delivered")
    finally:
        target.close()


def test_a_producer_that_failed_for_good_is_replaced_by_the_next_publish(
    cluster: MockCluster, topic: str
) -> None:
    # Refused a producer id, an idempotent producer cannot go on (a fatal error).
    cluster.fail_requests(INIT_PRODUCER_ID, CLUSTER_AUTHORIZATION_FAILED)
    target = Kafka(cluster.bootstrap, topic=topic, timeout=2)
    try:
        with pytest.raises(
            PublishFailed, match=r"producer failed and is replaced: .*authorization"
        ):
            target.publish(message({"n": 1}))
        assert str(target.publish(message({"n": 2}))).startswith("delivered")
    finally:
        target.close()
    [record] = read_topic(cluster.bootstrap, topic, 1, timeout=10)
    assert json.loads(record.value()) == {"n": 2}


def test_publishes_to_an_unreachable_cluster_fail_within_the_timeout() -> None:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens there once closed
    target = Kafka(f"127.0.0.1:{port}", topic="orders", timeout=1)
    try:
        started = time.monotonic()
        target.start(LIMITS)  # logs that the cluster does not answer; does not raise
        with pytest.raises(PublishFailed):
            target.publish(message({"n": 1}))
        assert time.monotonic() - started < 1 + 1 + 5
    finally:
        target.close()


class SilentKafka(Kafka):
    """A Kafka target whose delivery reports never come (its poll thread stuck, say)."""

    def _send(self, producer: Any, message: Message) -> Any:
        from outbox.publish.kafka import _Report

        return _Report()


def test_a_call_waits_for_its_reports_under_one_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reports waited for one after another, each with a deadline of its own: a call of 50
    whose reports never come took 50 times the timeout (a claim's 500, 500 times)."""
    monkeypatch.setattr("outbox.publish.kafka.REPORT_MARGIN", 0.05)
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    target = SilentKafka(f"127.0.0.1:{port}", topic="orders", timeout=0.2)
    try:
        started = time.monotonic()
        answers = target.publish_many([message({"n": n}) for n in range(50)])
        assert time.monotonic() - started < 3  # one deadline, not 50 of 0.25 s
        assert len(answers) == 50
        assert all(isinstance(a, PublishFailed) for a in answers)
        assert "no delivery report from Kafka within 0.25s" in str(answers[-1])
    finally:
        target.close()


def test_close_delivers_what_is_in_flight(cluster: MockCluster, topic: str) -> None:
    target = Kafka(cluster.bootstrap, topic=topic, timeout=10, linger_ms=5000)
    target.start(LIMITS)
    answers: list[str] = []
    threads = [
        threading.Thread(target=lambda: answers.append(str(target.publish(message({"n": 1})))))
        for _ in range(5)
    ]
    for thread in threads:
        thread.start()
    producer = target._producer
    wait_for(lambda: producer is not None and len(producer) == 5, 5, "five messages queued")
    target.close()
    for thread in threads:
        thread.join(10)
    assert len(answers) == 5
    assert all(a.startswith("delivered") for a in answers)


@pytest.mark.parametrize(
    ("args", "kwargs", "says"),
    [
        (("",), {"topic": "t"}, "bootstrap must list brokers"),
        (("localhost",), {"topic": "t"}, "'localhost' is not 'host:port'"),
        (("h:1,h:0",), {"topic": "t"}, "'h:0' is not 'host:port'"),
        (("h:1",), {"topic": ""}, "is not a topic name"),
        (("h:1",), {"topic": "a/b"}, "is not a topic name"),
        (("h:1",), {"topic": ".."}, "is not a topic name"),
        (("h:1",), {"topic": "t", "timeout": 0}, "timeout must be a number"),
        (("h:1",), {"topic": "t", "timeout": "5"}, "timeout must be a number"),
        (("h:1",), {"topic": "t", "acks": 1}, "'acks' cannot be set"),
        (("h:1",), {"topic": "t", "enable_idempotence": False}, "always idempotent"),
        (("h:1",), {"topic": "t", "message_timeout_ms": 5}, "use timeout="),
        (("h:1",), {"topic": "t", "bootstrap_servers": "x:1"}, "as the first argument"),
        (
            ("h:1",),
            {"topic": "t", "no_such_setting": 1},
            'No such configuration property: "no.such.setting"',
        ),
        (("h:1",), {"topic": "t", "linger_ms": "soon"}, "Invalid value"),
        (("h:1",), {"topic": "t", "linger_ms": [1]}, "must be a string, number or boolean"),
        (("h:1",), {"topic": "t", "client_id": "a\ud800"}, "'client_id' is not valid text"),
    ],
)
def test_bad_constructor_input_is_refused(
    args: tuple[Any, ...], kwargs: dict[str, Any], says: str
) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(says)):
        Kafka(*args, **kwargs)


def test_settings_pass_to_the_producer_under_their_dotted_names(
    cluster: MockCluster, topic: str
) -> None:
    target = Kafka(cluster.bootstrap, topic=topic, compression_type="zstd", **{"linger.ms": 2})
    try:
        assert str(target.publish(message({"n": 1}))).startswith("delivered")
    finally:
        target.close()


def test_without_the_client_the_target_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "confluent_kafka", None)
    with pytest.raises(ConfigurationError, match=r"pip install 'outbox-relay\[kafka\]'"):
        Kafka("h:1", topic="t")


# End to end: the application publishes, relays deliver, a consumer applies with its inbox.


def publish_all(engine: sa.Engine, count: int, keys: int) -> list[outbox.Enqueued]:
    with Session(engine) as session:
        handles = outbox.publish.publish_many(
            session,
            [
                outbox.publish.Publish("stream", {"seq": n}, key=f"k{n % keys}", event="e")
                for n in range(count)
            ],
        )
        session.commit()
    return handles


def consume_with_inbox(engine: sa.Engine, records: list[confluent_kafka.Message]) -> list[str]:
    """The consumer: each record in a transaction of its own, applied when the inbox says
    it is the first; returns the ids it applied."""
    applied = []
    for record in records:
        message_id = headers_of(record)["outbox-id"]
        with Session(engine) as session:
            if outbox.inbox(session, "billing", message_id):
                applied.append(message_id)
            session.commit()
    return applied


def test_relay_delivers_everything_after_the_cluster_was_down_for_20_seconds(
    db: sa.Engine, dsn: str, cluster: MockCluster, topic: str
) -> None:
    registry = outbox.Registry()
    registry.destination(
        "stream", Kafka(cluster.bootstrap, topic=topic, timeout=2), max_attempts=100,
        retry=tenacity.wait_fixed(0.5),
    )  # fmt: skip
    handles = publish_all(db, 60, keys=6)
    cluster.down()
    try:
        with running_relay(registry, dsn):
            wait_for(lambda: any(r.event == "failed" for r in history(db)), 10, "failures")
            time.sleep(20)  # the outage the test is about, not a wait for a condition
            cluster.up()
            wait_for(lambda: live_jobs(db) == 0, 30, "every message delivered")
    finally:
        cluster.up()
    records = read_topic(cluster.bootstrap, topic, 60, timeout=15)
    ids = [headers_of(r)["outbox-id"] for r in records]
    assert set(ids) == {str(h.uuid) for h in handles}, "nothing lost"
    first: dict[str, list[int]] = defaultdict(list)
    for record in records:
        if headers_of(record)["outbox-id"] in consume_with_inbox(db, [record]):
            first[record.key().decode()].append(json.loads(record.value())["seq"])
    assert sorted(n for seqs in first.values() for n in seqs) == list(range(60))
    assert all(seqs == sorted(seqs) for seqs in first.values()), "each key in its order"
    reasons = [r.reason for r in history(db, handles[0].uuid) if r.event == "succeeded"]
    assert reasons
    assert reasons[0].startswith(f"delivered: {topic} partition ")


@contextlib.contextmanager
def relay_process(dsn: str, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "outbox", "--dsn", dsn, "relay", "--app",
             "tests.integration.kafka_app:registry", "--metrics-addr", "off"],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "OUTBOX_LEASE": "2s", "OUTBOX_POLL_INTERVAL": "0.2s",
                 "OUTBOX_RESCUE_INTERVAL": "0.5s", **env},
        )  # fmt: skip
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def test_a_relay_killed_after_the_ack_republishes_the_same_id_and_the_inbox_applies_it_once(
    db: sa.Engine, dsn: str, cluster: MockCluster, topic: str, tmp_path: Path
) -> None:
    [handle] = publish_all(db, 1, keys=1)
    stall = tmp_path / "acknowledged"
    env = {"KAFKA_TEST_BOOTSTRAP": cluster.bootstrap, "KAFKA_TEST_TOPIC": topic,
           "KAFKA_TEST_STALL": str(stall)}  # fmt: skip
    with relay_process(dsn, env, tmp_path / "first.log") as first:
        wait_for(stall.exists, 30, "Kafka's acknowledgement of the first publish")
        os.killpg(first.pid, signal.SIGKILL)  # before the job's completion
        first.wait(10)
    assert live_jobs(db) == 1, "the job was not completed"
    with relay_process(dsn, env, tmp_path / "second.log"):
        wait_for(lambda: live_jobs(db) == 0, 30, "the job delivered again and completed")
    records = read_topic(cluster.bootstrap, topic, 2, timeout=15)
    assert [headers_of(r)["outbox-id"] for r in records] == [str(handle.uuid)] * 2
    assert records[0].value() == records[1].value()
    assert consume_with_inbox(db, records) == [str(handle.uuid)], "applied once"
