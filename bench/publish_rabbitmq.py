"""RabbitMQ publish throughput with confirms: the raw aio-pika client beside outbox.

    python -m bench.publish_rabbitmq [--messages 20000] [--keys 0] [--concurrency N]
                                     [--window 1000]
                                     [--url amqp://guest:guest@127.0.0.1:5672/%2F]

Each run publishes to a durable queue of its own (deleted after) through the default
exchange, while a no-op consumer (no acks, counting, in a process of its own) reads it. Every
message is persistent, ``mandatory``, with its ``message_id``, and counts when its publisher
confirm arrived. (a) raw: one confirm-mode channel with ``--window`` senders, each one
message in flight (aiormq's ``basic_publish`` without waiting for each write), until every
confirm arrived: the client the fastest way it can, the limit. (b) outbox: N publish jobs
enqueued with ``publish_many`` (not timed), ANALYZE, then ``outbox relay`` at its defaults (or
``--concurrency N`` handler threads) with one ``RabbitMQ`` destination, timed from the
relay's start until every job is done and every message consumed, and again from its first
claim to its last completion as history dates them. ``--keys K`` gives the messages K keys
(0: none), so the relay keeps each key's order. Prints both rates and the ratio. Uses
OUTBOX_DSN, else 127.0.0.1:5432, else the embedded server, in a database of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import shlex
import sys
import time
import uuid
from contextlib import closing
from pathlib import Path
from typing import Any

import aio_pika
from aiormq import spec

import outbox
from bench.publishing import (
    Drain,
    add_relay_arguments,
    drain,
    fill,
    interleaved,
    relay_name,
    relay_options,
    report,
    wait_consumed,
)
from outbox.database import create_engine
from outbox.publish import Publish, RabbitMQ
from outbox.testing import server_dsn, temporary_database

ROOT = Path(__file__).resolve().parents[1]
URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
BODY = {"transfer_id": 12345, "amount": "10.50", "currency": "EUR", "account": "customer-3"}
RAW_BODY = b'{"transfer_id":12345,"amount":"10.50","currency":"EUR","account":"customer-3"}'

#: The relay's application (``--app bench.publish_rabbitmq:registry``): one destination to
#: the broker and queue that ``BENCH_RABBITMQ_URL`` and ``BENCH_RABBITMQ_QUEUE`` name.
registry = outbox.Registry()
if queue_name := os.environ.get("BENCH_RABBITMQ_QUEUE"):
    registry.destination(
        "bench", RabbitMQ(os.environ.get("BENCH_RABBITMQ_URL", URL), routing_key=queue_name)
    )


def consume(url: str, name: str, consumed: Any, ready: Any, stop: Any) -> None:
    """The no-op consumer, in a process of its own: it counts, and nothing else shares the
    publishers' interpreter."""

    async def run() -> None:
        connection = await aio_pika.connect(url)
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=1000)
        queue = await channel.declare_queue(name, durable=True)

        async def count(message: Any) -> None:
            consumed.value += 1

        tag = await queue.consume(count, no_ack=True)
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.05)
        await queue.cancel(tag)
        await queue.delete(if_unused=False, if_empty=False)
        await connection.close()

    asyncio.run(run())


class Queue:
    """A durable queue of one run, deleted after, with its no-op consumer."""

    def __init__(self, url: str) -> None:
        self.url, self.name = url, f"bench-{uuid.uuid4().hex[:10]}"
        context = multiprocessing.get_context("spawn")
        self.counter = context.Value("q", 0, lock=False)  # one writer: the consumer
        ready, self.stop = context.Event(), context.Event()
        self.process = context.Process(
            target=consume, args=(url, self.name, self.counter, ready, self.stop), daemon=True
        )
        self.process.start()
        if not ready.wait(60):
            raise SystemExit("the consumer did not start")

    @property
    def consumed(self) -> int:
        return int(self.counter.value)

    def close(self) -> None:
        self.stop.set()
        self.process.join(30)


def raw(args: argparse.Namespace) -> float:
    """Seconds for the raw client to publish every message and have every confirm."""

    async def publish_all(name: str) -> float:
        connection = await aio_pika.connect(args.url)
        channel = await (await connection.channel()).get_underlay_channel()
        left = [args.messages]

        async def sender() -> None:
            # Senders, each one message in flight until its confirm: the client's fastest
            # way (10,000 messages/s here, where a task a message behind a semaphore of as
            # many took 7,900).
            while left[0] > 0:
                left[0] -= 1
                n = left[0]
                headers = {"outbox-key": f"k{n % args.keys}"} if args.keys else {}
                properties = spec.Basic.Properties(
                    message_id=str(uuid.uuid4()), content_type="application/json",
                    delivery_mode=2, headers=headers,
                )  # fmt: skip
                await channel.basic_publish(
                    RAW_BODY, routing_key=name, properties=properties, mandatory=True, wait=False
                )

        started = time.perf_counter()
        await asyncio.gather(*(sender() for _ in range(args.window)))
        elapsed = time.perf_counter() - started
        await connection.close()
        return elapsed

    with closing(Queue(args.url)) as feed:
        elapsed = asyncio.run(publish_all(feed.name))
        wait_consumed(feed, args.messages, args.timeout)
    return elapsed


def through_outbox(args: argparse.Namespace) -> Drain:
    """The same messages as publish jobs, published by a relay at its defaults (or with
    ``--concurrency``)."""
    with (
        temporary_database(server_dsn(), prefix="outbox_bench") as dsn,
        closing(Queue(args.url)) as feed,
    ):
        engine = create_engine(dsn)
        try:
            fill(engine, (
                Publish("bench", BODY, key=f"k{n % args.keys}" if args.keys else None)
                for n in range(args.messages)
            ))  # fmt: skip
            env = {"OUTBOX_DSN": dsn, "BENCH_RABBITMQ_URL": args.url,
                   "BENCH_RABBITMQ_QUEUE": feed.name}  # fmt: skip
            options = relay_options(args.processes, args.concurrency)
            return drain(
                engine, "bench.publish_rabbitmq:registry", env, messages=args.messages,
                timeout=args.timeout, options=options,
                after=lambda: wait_consumed(feed, args.messages, args.timeout),
            )  # fmt: skip
        finally:
            engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--keys", type=int, default=0, help="distinct keys (0: none)")
    add_relay_arguments(parser)
    parser.add_argument(
        "--window", type=int, default=1000, help="the raw client's senders (messages in flight)"
    )
    parser.add_argument("--url", default=URL)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds of raw then outbox, back to back"
    )
    args = parser.parse_args(argv)
    print(
        "$ python -m bench.publish_rabbitmq " + shlex.join(sys.argv[1:] if argv is None else argv)
    )
    runs = interleaved(args.rounds, lambda: raw(args), lambda: through_outbox(args))
    keys = f"{args.keys} keys" if args.keys else "no keys"
    return report(
        runs, args.messages, f"aio-pika (aiormq channel), {args.window} senders, all confirms",
        f"{relay_name(args.processes, args.concurrency)} ({keys})",
    )  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
