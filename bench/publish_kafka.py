"""Kafka publish throughput: the raw confluent-kafka producer beside outbox, to the same
librdkafka mock cluster.

    python -m bench.publish_kafka [--messages 20000] [--brokers 3] [--partitions 6]

The cluster is librdkafka's mock (no Kafka server runs here), hosted by this process
(tests/integration/kafka_mock.py); nothing consumes. (a) raw: one idempotent producer
(acks=all, as the target's), every message produced at once with the same body and headers,
then one flush: the limit. (b) outbox: N publish jobs enqueued with ``publish_many`` (not
timed), then ``outbox relay`` at its defaults with one ``Kafka`` destination, timed from the
relay's start until every job is done, and again from its first claim to its last
completion as history dates them. Prints both rates and the ratio, and checks that the
topic's partitions hold every message. Uses OUTBOX_DSN, else 127.0.0.1:5432, else the
embedded server, in a database of its own.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import threading
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

import outbox
from bench.publishing import add_relay_arguments, drain, fill, relay_name, relay_options
from outbox.database import create_engine
from outbox.publish import Kafka, Publish
from outbox.testing import server_dsn, temporary_database

ROOT = Path(__file__).resolve().parents[1]
BODY = {"transfer_id": 12345, "amount": "10.50", "currency": "EUR", "account": "customer-3"}
KEYS = 1000

#: The relay's application (``--app bench.publish_kafka:registry``): one destination to the
#: cluster and topic that ``BENCH_KAFKA_BOOTSTRAP`` and ``BENCH_KAFKA_TOPIC`` name.
registry = outbox.Registry()
if bootstrap := os.environ.get("BENCH_KAFKA_BOOTSTRAP"):
    registry.destination("bench", Kafka(bootstrap, topic=os.environ["BENCH_KAFKA_TOPIC"]))


def raw(bootstrap: str, topic: str, messages: int) -> float:
    """Seconds for one producer to have ``messages`` acknowledged: all produced, one flush."""
    from confluent_kafka import Producer

    body = json.dumps(BODY, separators=(",", ":")).encode()
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all"})
    producer.list_topics(topic, timeout=10)  # connected before the clock starts
    failed = []

    def report(error: object, message: object) -> None:
        if error is not None:
            failed.append(error)

    started = time.perf_counter()
    for n in range(messages):
        headers = [("outbox-key", f"k{n % KEYS}"), ("outbox-id", str(uuid.uuid4()))]
        while True:
            try:
                producer.produce(topic, body, f"k{n % KEYS}", headers=headers, on_delivery=report)
                break
            except BufferError:
                producer.poll(0.01)
    left = producer.flush(60)
    elapsed = time.perf_counter() - started
    if left or failed:
        raise SystemExit(f"raw: {left} undelivered, {len(failed)} failed ({failed[:1]})")
    return elapsed


def raw_confirmed(bootstrap: str, topic: str, messages: int, threads: int) -> float:
    """Seconds for ``threads`` threads sharing one producer, each waiting for its message's
    delivery report before producing the next: the shape of a relay's handler threads."""
    from confluent_kafka import Producer

    body = json.dumps(BODY, separators=(",", ":")).encode()
    producer = Producer(
        {"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all", "linger.ms": 1}
    )
    producer.list_topics(topic, timeout=10)
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            producer.poll(0.05)

    poller = threading.Thread(target=poll)
    poller.start()

    def send(first: int) -> None:
        for n in range(first, messages, threads):
            done = threading.Event()
            producer.produce(
                topic, body, f"k{n % KEYS}", headers=[("outbox-id", str(uuid.uuid4()))],
                on_delivery=lambda error, message, done=done: done.set(),
            )  # fmt: skip
            done.wait(30)

    started = time.perf_counter()
    senders = [threading.Thread(target=send, args=(t,)) for t in range(threads)]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join()
    elapsed = time.perf_counter() - started
    stop.set()
    poller.join()
    producer.flush(10)
    return elapsed


def through_outbox(
    dsn: str, bootstrap: str, topic: str, messages: int, options: tuple[str, ...]
) -> tuple[float, float]:
    """Seconds from the relay's start until every publish job is done, and from its first
    claim to its last completion."""
    engine = create_engine(dsn, poolclass=sa.NullPool)
    try:
        fill(engine, (Publish("bench", BODY, key=f"k{n % KEYS}") for n in range(messages)))
        env = {"OUTBOX_DSN": dsn, "BENCH_KAFKA_BOOTSTRAP": bootstrap, "BENCH_KAFKA_TOPIC": topic}
        run = drain(engine, "bench.publish_kafka:registry", env, messages=messages, options=options)
    finally:
        engine.dispose()
    return run.elapsed, run.working


def stored(bootstrap: str, topic: str, partitions: int) -> int:
    """Messages the topic's partitions hold (their high watermarks)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench"})
    try:
        return sum(
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(partitions)
        )
    finally:
        consumer.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--brokers", type=int, default=3)
    parser.add_argument("--partitions", type=int, default=6)
    add_relay_arguments(parser)
    args = parser.parse_args(argv)
    print("$ python -m bench.publish_kafka " + shlex.join(sys.argv[1:] if argv is None else argv))
    sys.path.insert(0, str(ROOT))
    from tests.integration.kafka_mock import MockCluster

    cluster = MockCluster(args.brokers)
    try:
        raw_topic, outbox_topic = "bench-raw", "bench-outbox"
        for topic in (raw_topic, outbox_topic):
            cluster.create_topic(topic, args.partitions)
        raw_seconds = raw(cluster.bootstrap, raw_topic, args.messages)
        threads = args.concurrency or 16
        confirmed_seconds = raw_confirmed(cluster.bootstrap, raw_topic, args.messages, threads)
        with temporary_database(server_dsn(), prefix="outbox_bench") as dsn:
            elapsed, working = through_outbox(
                dsn, cluster.bootstrap, outbox_topic, args.messages,
                relay_options(args.processes, args.concurrency),
            )  # fmt: skip
        held = stored(cluster.bootstrap, outbox_topic, args.partitions)
    finally:
        cluster.close()
    raw_rate, rate, working_rate = (
        args.messages / raw_seconds, args.messages / elapsed, args.messages / working
    )  # fmt: skip
    confirmed_rate = args.messages / confirmed_seconds
    relay = relay_name(args.processes, args.concurrency)
    print(
        f"{args.messages:,} messages, mock cluster of {args.brokers} brokers, "
        f"{args.partitions} partitions, idempotent producer, acks=all\n"
        f"  raw producer, all produced then one flush: {raw_seconds:.2f}s = "
        f"{raw_rate:,.0f} msg/s\n"
        f"  raw producer, {threads} threads each waiting for its delivery report: "
        f"{confirmed_seconds:.2f}s = {confirmed_rate:,.0f} msg/s\n"
        f"  outbox relay at {relay}: {elapsed:.2f}s from its start = {rate:,.0f} msg/s "
        f"({rate / raw_rate:.0%} of raw, {rate / confirmed_rate:.0%} of raw with {threads} "
        f"waiting threads); first claim to last completion {working:.2f}s = "
        f"{working_rate:,.0f} msg/s ({working_rate / raw_rate:.0%} of raw)\n"
        f"  the outbox topic holds {held:,} messages"
    )
    return 0 if held >= args.messages else 1


if __name__ == "__main__":
    raise SystemExit(main())
