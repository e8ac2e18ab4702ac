"""Webhook publish throughput: a raw HTTP client beside outbox, to the same local receiver.

    python -m bench.publish_webhook [--messages 20000] [--rounds 3] [--in-flight 64]
                                    [--processes 1] [--concurrency N]
                                    [--receiver asyncio|uvicorn] [--receivers 1]

The receiver, a no-op consumer answering 204 to every POST, runs in processes of its own on
127.0.0.1: by default a minimal HTTP/1.1 server on asyncio's protocols (the fastest here:
uvicorn with h11 answered about 2,000 requests/s on this machine, less than the client
sends), or ``--receiver uvicorn``, a minimal ASGI app. Each round runs (a) raw: the
target's HTTP client alone on one event loop, ``--in-flight`` requests in flight over as
many keep-alive connections, no signing: the limit; then (b) outbox: N publish jobs
enqueued with ``publish_many`` (not timed), then ``outbox relay`` at its defaults (or with
``--processes`` and ``--concurrency``) with one ``Webhook`` destination, timed from the
relay's start until every job is done, and again from its first claim to its last
completion as history dates them. Prints the medians of the rounds with min and max, and
the ratio. Uses OUTBOX_DSN, else 127.0.0.1:5432, else the embedded server, in a database of
its own.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import sqlalchemy as sa

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
)
from outbox.database import create_engine
from outbox.publish import Publish, Webhook
from outbox.testing import server_dsn, temporary_database

ROOT = Path(__file__).resolve().parents[1]
SECRET = "whsec_YmVuY2ggc2VjcmV0IG9mIDI0IGJ5dGVzIQ=="
BODY = b'{"transfer_id":12345,"amount":"10.50","currency":"EUR","account":"customer-3"}'

#: The relay's application (``--app bench.publish_webhook:registry``): one destination to
#: the receiver that ``BENCH_WEBHOOK_URL`` names.
registry = outbox.Registry()
if url := os.environ.get("BENCH_WEBHOOK_URL"):
    registry.destination("bench", Webhook(url, secret=SECRET, allow_private=True))


Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


async def receiver(scope: Scope, receive: Receive, send: Send) -> None:
    """The no-op consumer: reads the body, answers 204."""
    if scope["type"] != "http":
        return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


class NoopProtocol(asyncio.Protocol):
    """A keep-alive HTTP/1.1 endpoint that answers 204 to each request (bodies with a
    content-length, as the target sends them), and reads nothing else."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport, self.buffer = transport, b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            length = 0
            for line in self.buffer[:end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length :]
            self.transport.write(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")


async def serve_noop(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(NoopProtocol, "127.0.0.1", port, backlog=4096)
    await server.serve_forever()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve(port: int, kind: str, workers: int) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "bench.publish_webhook", "--serve", str(port)]
    if kind == "uvicorn":
        command = [
            sys.executable, "-m", "uvicorn", "bench.publish_webhook:receiver", "--host",
            "127.0.0.1", "--port", str(port), "--workers", str(workers), "--log-level",
            "warning", "--no-access-log", "--backlog", "4096",
        ]  # fmt: skip
    proc = subprocess.Popen(command, cwd=ROOT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        time.sleep(0.05)
    proc.kill()
    raise SystemExit("the receiver did not start in 30 s")


def raw(port: int, messages: int, concurrency: int) -> float:
    """Seconds for the target's HTTP client alone, on one event loop with ``concurrency``
    senders, each one request in flight at a time over its keep-alive connection, to POST
    ``messages`` unsigned. Senders are its fastest way: a task a request behind a semaphore
    of 64 took 9,000 requests/s where 64 senders took 12,300."""
    import aiohttp

    async def run() -> float:
        url = f"http://127.0.0.1:{port}/hooks"
        headers = {"content-type": "application/json"}
        failures: list[int] = []
        left = [0]
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector, trust_env=False) as client:

            async def sender() -> None:
                while left[0] > 0:
                    left[0] -= 1
                    async with client.post(
                        url, data=BODY, headers=headers, allow_redirects=False
                    ) as answer:
                        await answer.read()
                        if not 200 <= answer.status < 300:
                            failures.append(answer.status)

            left[0] = concurrency
            await asyncio.gather(*(sender() for _ in range(concurrency)))  # connected first
            left[0] = messages
            started = time.perf_counter()
            await asyncio.gather(*(sender() for _ in range(concurrency)))
            elapsed = time.perf_counter() - started
        if failures:
            raise SystemExit(f"raw: {len(failures)} requests failed, e.g. HTTP {failures[0]}")
        return elapsed

    return asyncio.run(run())


def through_outbox(url: str, args: argparse.Namespace) -> Drain:
    """The relay's drain of the same messages, signed: from its start until all is
    delivered, and from its first claim to its last completion."""
    with temporary_database(server_dsn(), prefix="outbox_bench") as dsn:
        engine = create_engine(dsn, poolclass=sa.NullPool)
        body = {"transfer_id": 12345, "amount": "10.50", "currency": "EUR"}
        try:
            fill(engine, (
                Publish("bench", body, event="transfer.posted") for _ in range(args.messages)
            ))  # fmt: skip
            return drain(
                engine, "bench.publish_webhook:registry",
                {"OUTBOX_DSN": dsn, "BENCH_WEBHOOK_URL": url}, messages=args.messages,
                timeout=args.timeout, options=relay_options(args.processes, args.concurrency),
            )  # fmt: skip
        finally:
            engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument(
        "--in-flight", type=int, default=64, help="the raw client's requests in flight at once"
    )
    add_relay_arguments(parser)
    parser.add_argument("--receiver", choices=["asyncio", "uvicorn"], default="asyncio")
    parser.add_argument("--receivers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds of raw then outbox, back to back"
    )
    args = parser.parse_args(argv)
    if args.serve:
        asyncio.run(serve_noop(args.serve))
        return 0
    print("$ python -m bench.publish_webhook " + shlex.join(sys.argv[1:] if argv is None else argv))
    port = free_port()
    server = serve(port, args.receiver, args.receivers)
    try:
        target = f"http://127.0.0.1:{port}/hooks"
        runs = interleaved(
            args.rounds,
            lambda: raw(port, args.messages, args.in_flight),
            lambda: through_outbox(target, args),
        )
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
    return report(
        runs, args.messages,
        f"aiohttp, the target's client, {args.in_flight} senders, keep-alive, unsigned",
        f"{relay_name(args.processes, args.concurrency)}, signed, history on "
        f"({args.receiver} receiver)",
    )  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
