"""NATS JetStream publish throughput: the raw nats-py client beside outbox, to one server.

    python -m bench.publish_nats [--messages 20000] [--keys 0] [--url nats://127.0.0.1:4222]

Each run publishes to a stream of its own (file storage, a duplicate window of two hours:
past the relay's lease plus its longest backoff), deleted after, while a no-op consumer (an
ordered push consumer that counts) reads it. (a) raw:
``js.publish_async`` for every message with its ``Nats-Msg-Id``, then waiting for all the
PubAcks: the client the fastest way it can, the limit. (b) outbox: N publish jobs enqueued
with ``publish_many`` (not timed), ANALYZE, then ``outbox relay`` at its defaults with one
``NatsJetStream`` destination, timed from the relay's start until every job is done and
every message stored, and again from its first claim to its last completion as history
dates them. ``--keys K`` gives the messages K keys (0: none), so the relay keeps each key's
order. Prints both rates and the ratio. Uses OUTBOX_DSN, else 127.0.0.1:5432, else the
embedded server, in a database of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
import threading
import time
import uuid
from contextlib import closing
from pathlib import Path
from typing import Any

import nats

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
from outbox.publish import NatsJetStream, Publish
from outbox.testing import server_dsn, temporary_database

ROOT = Path(__file__).resolve().parents[1]
BODY = {"transfer_id": 12345, "amount": "10.50", "currency": "EUR", "account": "customer-3"}
RAW_BODY = b'{"transfer_id":12345,"amount":"10.50","currency":"EUR","account":"customer-3"}'

#: The relay's application (``--app bench.publish_nats:registry``): one destination to the
#: server and subject that ``BENCH_NATS_URL`` and ``BENCH_NATS_SUBJECT`` name.
registry = outbox.Registry()
if subject := os.environ.get("BENCH_NATS_SUBJECT"):
    registry.destination(
        "bench", NatsJetStream(os.environ.get("BENCH_NATS_URL", "nats://127.0.0.1:4222"), subject)
    )


class Stream:
    """A stream of one run with its no-op consumer, on a loop in a thread of its own."""

    def __init__(self, url: str) -> None:
        tag = uuid.uuid4().hex[:10]
        self.url, self.name, self.prefix = url, f"BENCH_{tag}", f"bench-{tag}"
        self.consumed = 0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.nc: Any = None
        self.consumer: Any = None
        self.run(self._open())

    def run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(600)

    async def _open(self) -> None:
        self.nc = await nats.connect(self.url)
        js = self.nc.jetstream()
        # A window past the relay's lease plus longest backoff (30 s + 1 h): no warning.
        await js.add_stream(name=self.name, subjects=[f"{self.prefix}.>"], duplicate_window=7200)

        async def count(msg: Any) -> None:
            self.consumed += 1

        self.consumer = await js.subscribe(f"{self.prefix}.>", cb=count, ordered_consumer=True)

    def close(self) -> None:
        async def close() -> None:
            await self.consumer.unsubscribe()
            await self.nc.jetstream().delete_stream(self.name)
            await self.nc.close()

        self.run(close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def raw(args: argparse.Namespace) -> float:
    """Seconds for the raw client to publish every message and have every PubAck."""

    async def publish_all(prefix: str) -> float:
        nc = await nats.connect(args.url)
        js = nc.jetstream()
        started = time.perf_counter()
        pending = []
        for n in range(args.messages):
            key = f"k{n % args.keys}" if args.keys else None
            headers = {"Nats-Msg-Id": str(uuid.uuid4()), "Content-Type": "application/json"}
            if key:
                headers["outbox-key"] = key
            pending.append(
                await js.publish_async(f"{prefix}.{key or 'all'}", RAW_BODY, headers=headers)
            )
        await asyncio.gather(*pending)
        elapsed = time.perf_counter() - started
        await nc.close()
        return elapsed

    with closing(Stream(args.url)) as feed:
        elapsed = asyncio.run(publish_all(feed.prefix))
        wait_consumed(feed, args.messages, args.timeout)
    return elapsed


def through_outbox(args: argparse.Namespace) -> Drain:
    """The same messages as publish jobs, published by a relay at its defaults."""
    with (
        temporary_database(server_dsn(), prefix="outbox_bench") as dsn,
        closing(Stream(args.url)) as feed,
    ):
        engine = create_engine(dsn)
        try:
            fill(engine, (
                Publish("bench", BODY, key=f"k{n % args.keys}" if args.keys else None)
                for n in range(args.messages)
            ))  # fmt: skip
            subject = f"{feed.prefix}.{{key}}" if args.keys else f"{feed.prefix}.all"
            env = {"OUTBOX_DSN": dsn, "BENCH_NATS_URL": args.url, "BENCH_NATS_SUBJECT": subject}
            return drain(
                engine, "bench.publish_nats:registry", env, messages=args.messages,
                timeout=args.timeout, options=relay_options(args.processes, args.concurrency),
                after=lambda: wait_consumed(feed, args.messages, args.timeout),
            )  # fmt: skip
        finally:
            engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--keys", type=int, default=0, help="distinct keys (0: none)")
    add_relay_arguments(parser)
    parser.add_argument("--url", default="nats://127.0.0.1:4222")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds of raw then outbox, back to back"
    )
    args = parser.parse_args(argv)
    print("$ python -m bench.publish_nats " + shlex.join(sys.argv[1:] if argv is None else argv))
    runs = interleaved(args.rounds, lambda: raw(args), lambda: through_outbox(args))
    keys = f"{args.keys} keys" if args.keys else "no keys"
    relay = relay_name(args.processes, args.concurrency)
    return report(runs, args.messages, "nats-py, publish_async, all PubAcks", f"{relay} ({keys})")


if __name__ == "__main__":
    raise SystemExit(main())
