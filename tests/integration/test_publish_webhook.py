"""The Webhook target against a real HTTP endpoint on 127.0.0.1: each message arrives once
under its job uuid, signed per Standard Webhooks, body and headers intact, in order per key;
the endpoint's answers become delivered, retried (with Retry-After) or dead; and end to end
through relays, an endpoint down for 20 s or a relay killed after the endpoint took a message
loses nothing and applies nothing twice."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import dataclasses
import gc
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
import sqlalchemy as sa
import tenacity
from sqlalchemy.orm import Session

import outbox
from outbox.errors import ConfigurationError
from outbox.publish import (
    Delivery,
    Limits,
    Message,
    PublishFailed,
    PublishRejected,
    Webhook,
    verify_webhook,
)
from outbox.publish.webhook import POOL, retry_after
from tests.integration.helpers import history
from tests.integration.relay_harness import live_jobs, running_relay, wait_for

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parents[2]
SECRET = "whsec_" + base64.b64encode(b"the secret of the webhook tests").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"the secret after rotation").decode()
LIMITS = Limits(lease_seconds=30, longest_backoff_seconds=60)


@dataclasses.dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    port: int  # the client's port: one per connection
    #: Every header line as sent, repeated names included (``headers`` keeps the last).
    lines: tuple[tuple[str, str], ...] = ()


Answer = Callable[[Received], tuple[int, dict[str, str], bytes]]


def accept(request: Received) -> tuple[int, dict[str, str], bytes]:
    return 204, {}, b""


class Receiver:
    """A real HTTP/1.1 endpoint with keep-alive: records every request, answers as told.

    ``close`` also cuts the connections it holds open, so the endpoint is really gone.
    """

    def __init__(
        self, answer: Answer = accept, port: int = 0, tls: ssl.SSLContext | None = None
    ) -> None:
        self.answer = answer
        self.requests: list[Received] = []
        self.lock = threading.Lock()
        self.connections: set[socket.socket] = set()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with receiver.lock:
                    receiver.connections.add(self.connection)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                request = Received(
                    self.path, {k.lower(): v for k, v in self.headers.items()}, body,
                    self.client_address[1], tuple(self.headers.items()),
                )  # fmt: skip
                with receiver.lock:
                    receiver.requests.append(request)
                status, headers, answer = receiver.answer(request)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            allow_reuse_address = True
            request_queue_size = 128  # a batch opens many connections at once

        self.server = Server(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.scheme = "https" if tls else "http"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/hooks"

    def received(self) -> list[Received]:
        with self.lock:
            return list(self.requests)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        with self.lock:
            for connection in self.connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver()
    yield made
    made.close()


@contextlib.contextmanager
def started(target: Webhook) -> Iterator[Webhook]:
    target.start(LIMITS)
    try:
        yield target
    finally:
        target.close()


def message(
    n: int, key: str | None = None, event: str | None = "order.paid", **headers: str
) -> Message:
    body = json.dumps({"n": n, "amount": 10.50, "text": "naïve ✓"}, ensure_ascii=False)
    return Message(
        uuid=uuid4(), destination="partner", body=body.encode(), key=key, event=event,
        headers=headers, attempt=1, enqueued_at=datetime.now(UTC),
    )  # fmt: skip


# --- the target alone ---------------------------------------------------------------------


def test_messages_arrive_once_each_signed_intact_and_in_order_per_key(receiver: Receiver) -> None:
    keys = [f"order:{k}" for k in range(32)]
    per_key = {key: [message(n, key, tenant="t1") for n in range(12)] for key in keys}
    sent = {m.id: m for ms in per_key.values() for m in ms}
    answers: list[Delivery] = []
    with started(Webhook(receiver.url, secret=SECRET, allow_private=True)) as target:

        def run(mine: list[str]) -> None:  # same-key messages one after the other, in order
            for key in mine:
                answers.extend(target.publish(m) for m in per_key[key])

        threads = [threading.Thread(target=run, args=(keys[t::16],)) for t in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    assert answers == [Delivery("delivered", "HTTP 204")] * len(sent)
    got = receiver.received()
    assert sorted(r.headers["webhook-id"] for r in got) == sorted(sent)  # each once
    for request in got:
        sent_message = sent[request.headers["webhook-id"]]
        assert request.body == sent_message.body
        assert verify_webhook(request.body, request.headers, SECRET) == sent_message.id
        assert request.headers["idempotency-key"] == sent_message.id
        assert request.headers["content-type"] == "application/json"
        assert request.headers["outbox-key"] == sent_message.key
        assert request.headers["outbox-event"] == "order.paid"
        assert request.headers["tenant"] == "t1"
        assert request.path == "/hooks"
    for key, messages in per_key.items():
        arrived = [r.headers["webhook-id"] for r in got if r.headers["outbox-key"] == key]
        assert arrived == [m.id for m in messages], key
    connections = len({r.port for r in got})
    assert connections <= 64, f"{connections} connections for {len(got)} requests"


def test_a_message_without_key_or_event_has_no_such_header(receiver: Receiver) -> None:
    with started(Webhook(receiver.url, secret=SECRET, allow_private=True)) as target:
        target.publish(message(1, key=None, event=None))
    (request,) = receiver.received()
    assert "outbox-key" not in request.headers
    assert "outbox-event" not in request.headers


def test_outbox_sets_its_own_headers_over_the_applications(receiver: Receiver) -> None:
    given = {"Idempotency-Key": "mine", "Content-Type": "text/plain", "X-Trace": "abc"}
    sent = message(1, "k", **given)
    with started(Webhook(receiver.url, secret=SECRET, allow_private=True)) as target:
        target.publish(sent)
    (request,) = receiver.received()
    assert request.headers["idempotency-key"] == sent.id
    assert request.headers["content-type"] == "application/json"
    assert request.headers["x-trace"] == "abc"


def test_a_header_outbox_sets_is_sent_once_whatever_the_application_gives(
    receiver: Receiver,
) -> None:
    given = {"User-Agent": "mine/1", "Accept-Encoding": "gzip", "content-TYPE": "text/plain"}
    with started(Webhook(receiver.url, secret=SECRET, allow_private=True)) as target:
        target.publish(message(1, "k", **given))
    (request,) = receiver.received()
    names = [name.lower() for name, _ in request.lines]
    assert sorted(n for n in names if names.count(n) > 1) == []
    assert request.headers["user-agent"] == "outbox-relay"
    assert request.headers["accept-encoding"] == "identity"  # answers read as sent
    assert request.headers["content-type"] == "application/json"


def test_rotation_signs_with_every_secret_and_either_verifies(receiver: Receiver) -> None:
    target = Webhook(receiver.url, secret=[OTHER_SECRET, SECRET], allow_private=True)
    with started(target):
        sent = message(1, "k")
        target.publish(sent)
    (request,) = receiver.received()
    assert len(request.headers["webhook-signature"].split()) == 2
    for secrets in ([SECRET], [OTHER_SECRET], [SECRET, OTHER_SECRET]):
        assert verify_webhook(request.body, request.headers, secrets) == sent.id


def test_each_attempt_is_signed_afresh_under_the_same_id(receiver: Receiver) -> None:
    sent = message(1, "k")
    with started(Webhook(receiver.url, secret=SECRET, allow_private=True)) as target:
        target.publish(sent)
        target.publish(dataclasses.replace(sent, attempt=2))
    first, second = receiver.received()
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == sent.id
    assert first.body == second.body


def http_date(seconds_ahead: float) -> str:
    return format_datetime(datetime.now(UTC) + timedelta(seconds=seconds_ahead), usegmt=True)


@pytest.mark.parametrize(
    ("status", "headers", "body", "error", "detail", "wait"),
    [
        (200, {}, b"ok", None, "HTTP 200", None),
        (202, {}, b"", None, "HTTP 202", None),
        (410, {}, b"endpoint deleted", PublishRejected, "HTTP 410 Gone", None),
        (503, {"Retry-After": "7"}, b"", PublishFailed, "HTTP 503, Retry-After 7s", 7.0),
        (429, {"Retry-After": "2"}, b"slow down", PublishFailed, "HTTP 429", 2.0),
        (503, {}, b"maintenance", PublishFailed, "HTTP 503: maintenance", None),
        (400, {}, b"bad field \x1b[31m", PublishFailed, "HTTP 400: bad field", None),
        (401, {}, b"", PublishFailed, "HTTP 401", None),
        (500, {}, b"boom", PublishFailed, "HTTP 500: boom", None),
        (301, {"Location": "http://127.0.0.1:1/elsewhere"}, b"", PublishFailed,
         "HTTP 301: redirect to 'http://127.0.0.1:1/elsewhere' not followed", None),
        (307, {"Location": "/other"}, b"", PublishFailed, "not followed", None),
    ],
)  # fmt: skip
def test_the_endpoints_answer_becomes_the_outcome(
    status: int,
    headers: dict[str, str],
    body: bytes,
    error: type[Exception] | None,
    detail: str,
    wait: float | None,
) -> None:
    receiver = Receiver(lambda request: (status, headers, body))
    try:
        with started(Webhook(receiver.url, secret=SECRET, allow_private=True)) as target:
            if error is None:
                assert target.publish(message(1)) == Delivery("delivered", detail)
            else:
                with pytest.raises(error) as raised:
                    target.publish(message(1))
                exc = raised.value
                assert isinstance(exc, PublishFailed | PublishRejected)
                assert exc.detail.startswith(detail) or detail in exc.detail, exc.detail
                assert exc.status == status
                assert "\x1b" not in exc.detail
                if isinstance(exc, PublishFailed):
                    assert exc.retry_after == wait
        assert len(receiver.received()) == 1  # a redirect is not followed
    finally:
        receiver.close()


def test_publish_many_sends_a_batch_together_with_each_answer_at_its_place() -> None:
    def answer(request: Received) -> tuple[int, dict[str, str], bytes]:
        n = json.loads(request.body)["n"]
        return {
            1: (410, {}, b"gone"),
            2: (503, {"Retry-After": "3"}, b""),
            3: (400, {}, b"no"),
        }.get(n % 10, (204, {}, b""))

    receiver = Receiver(answer)
    batch = [message(n, f"k{n}") for n in range(40)]
    try:
        with started(Webhook(receiver.url, secret=SECRET, allow_private=True)) as target:
            answers = target.publish_many(batch)
        assert len(answers) == len(batch)
        for sent, got in zip(batch, answers, strict=True):
            n = json.loads(sent.body)["n"]
            if n % 10 == 1:
                assert isinstance(got, PublishRejected)
                assert got.status == 410
            elif n % 10 == 2:
                assert isinstance(got, PublishFailed)
                assert got.retry_after == 3
            elif n % 10 == 3:
                assert isinstance(got, PublishFailed)
                assert got.detail == "HTTP 400: no"
            else:
                assert got == Delivery("delivered", "HTTP 204")
        received = receiver.received()
        assert sorted(r.headers["webhook-id"] for r in received) == sorted(m.id for m in batch)
        for request in received:
            assert (
                verify_webhook(request.body, request.headers, SECRET)
                == request.headers["webhook-id"]
            )
        assert len({r.port for r in received}) <= POOL  # the pool's connections at most
    finally:
        receiver.close()


def test_publish_many_replaces_connections_the_endpoint_closed_while_idle() -> None:
    receiver = Receiver()
    port = receiver.port
    target = Webhook(receiver.url, secret=SECRET, allow_private=True)
    with started(target):
        assert (
            target.publish_many([message(n, f"k{n}") for n in range(8)])
            == [Delivery("delivered", "HTTP 204")] * 8
        )
        receiver.close()  # cuts the pool's idle connections
        down = target.publish_many([message(n, f"k{n}") for n in range(3)])
        assert all(isinstance(a, PublishFailed) and "cannot reach" in a.detail for a in down)
        back = Receiver(port=port)
        try:
            assert (
                target.publish_many([message(n, f"k{n}") for n in range(8)])
                == [Delivery("delivered", "HTTP 204")] * 8
            )
            assert len(back.received()) == 8
        finally:
            back.close()


def test_publish_many_waits_for_a_stalled_endpoint_no_longer_than_the_timeout() -> None:
    gate = threading.Event()

    def stall(request: Received) -> tuple[int, dict[str, str], bytes]:
        gate.wait(10)
        return 204, {}, b""

    receiver = Receiver(stall)
    try:
        target = Webhook(receiver.url, secret=SECRET, timeout=0.5, allow_private=True)
        with started(target):
            began = time.monotonic()
            answers = target.publish_many([message(n, f"k{n}") for n in range(6)])
            assert time.monotonic() - began < 2
        assert all(isinstance(a, PublishFailed) and "no answer" in a.detail for a in answers)
    finally:
        gate.set()
        receiver.close()


def test_calls_from_many_threads_share_the_pool_never_more_than_pool_in_flight() -> None:
    """Every calling thread's requests wait in one queue for the pool's senders: each is
    sent once, and no more than POOL are ever out at once."""
    lock, out, most = threading.Lock(), [0], [0]

    def slow(request: Received) -> tuple[int, dict[str, str], bytes]:
        with lock:
            out[0] += 1
            most[0] = max(most[0], out[0])
        time.sleep(0.02)
        with lock:
            out[0] -= 1
        return 204, {}, b""

    receiver = Receiver(slow)
    calls = [[message(n, f"k{n}") for n in range(t * 40, t * 40 + 40)] for t in range(8)]
    try:
        with (
            started(Webhook(receiver.url, secret=SECRET, allow_private=True)) as target,
            concurrent.futures.ThreadPoolExecutor(8) as threads,
        ):
            answers = list(threads.map(target.publish_many, calls))
        assert answers == [[Delivery("delivered", "HTTP 204")] * 40] * 8
        ids = [r.headers["webhook-id"] for r in receiver.received()]
        assert sorted(ids) == sorted(m.id for call in calls for m in call)  # each once
        assert 8 <= most[0] <= POOL
    finally:
        receiver.close()


def test_an_unexpected_error_fails_its_message_alone_and_the_pool_goes_on(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = Webhook(receiver.url, secret=SECRET, allow_private=True)
    post = target._post

    async def breaks_on_two(client: Any, body: bytes, headers: dict[str, str]) -> Any:
        if json.loads(body)["n"] == 2:
            raise RuntimeError("a bug")
        return await post(client, body, headers)

    monkeypatch.setattr(target, "_post", breaks_on_two)
    with started(target):
        first, broken, third = target.publish_many([message(n, f"k{n}") for n in (1, 2, 3)])
        assert first == third == Delivery("delivered", "HTTP 204")
        assert isinstance(broken, PublishFailed)
        assert "RuntimeError('a bug')" in broken.detail
        assert target.publish_many([message(4, "k4")]) == [Delivery("delivered", "HTTP 204")]


@pytest.mark.parametrize("pool", [1, POOL])
def test_a_cancelled_request_fails_its_message_at_once_and_the_queue_goes_on(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch, pool: int
) -> None:
    """A request that ends in CancelledError (no aiohttp path is known to raise it) fails
    its message at once, not after the call's backstop, and the requests queued behind it
    still go, even when its sender was the only one."""
    monkeypatch.setattr("outbox.publish.webhook.POOL", pool)
    target = Webhook(receiver.url, secret=SECRET, timeout=5, allow_private=True)
    post = target._post

    async def cancelled_on_two(client: Any, body: bytes, headers: dict[str, str]) -> Any:
        if json.loads(body)["n"] == 2:
            raise asyncio.CancelledError
        return await post(client, body, headers)

    monkeypatch.setattr(target, "_post", cancelled_on_two)
    with started(target):
        began = time.monotonic()
        first, cancelled, third = target.publish_many([message(n, f"k{n}") for n in (1, 2, 3)])
        assert time.monotonic() - began < 3
        assert first == third == Delivery("delivered", "HTTP 204")
        assert isinstance(cancelled, PublishFailed)
        assert "cancelled" in cancelled.detail
        assert target.publish_many([message(4, "k4")]) == [Delivery("delivered", "HTTP 204")]


def test_requests_still_waiting_when_the_target_closes_fail_and_it_can_start_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """close() while one request is out and two wait for a sender: all three are answered
    (failed, to be retried) at once; the same target then starts afresh on a new loop, its
    senders counted from zero again (a sender of the old loop counts against the old one)."""
    monkeypatch.setattr("outbox.publish.webhook.POOL", 1)
    gate = threading.Event()

    def stall(request: Received) -> tuple[int, dict[str, str], bytes]:
        gate.wait(10)
        return 204, {}, b""

    receiver = Receiver(stall)
    port = receiver.port
    target = Webhook(receiver.url, secret=SECRET, timeout=5, allow_private=True)
    try:
        target.start(LIMITS)
        with concurrent.futures.ThreadPoolExecutor(1) as thread:
            out = thread.submit(target.publish_many, [message(n, f"k{n}") for n in range(3)])
            wait_for(lambda: len(receiver.received()) >= 1, 5, "the first request")
            began = time.monotonic()
            target.close()
            answers = out.result(10)
            assert time.monotonic() - began < 3
        assert len(answers) == 3
        assert all(isinstance(a, PublishFailed) for a in answers)
    finally:
        gate.set()
        receiver.close()
    back = Receiver(port=port)
    try:
        with started(target):
            assert (
                target.publish_many([message(n, f"k{n}") for n in range(5)])
                == [Delivery("delivered", "HTTP 204")] * 5
            )
            gc.collect()  # what was left of the old loop's senders ends now, if anything did
            assert target._out.senders == 0
        assert len(back.received()) == 5
    finally:
        back.close()


def test_publish_many_refuses_only_the_message_with_a_bad_header(receiver: Receiver) -> None:
    batch = [message(1, "a"), message(2, "b", **{"x-evil": "a\nb"}), message(3, "c")]
    with started(Webhook(receiver.url, secret=SECRET, allow_private=True)) as target:
        first, refused, third = target.publish_many(batch)
    assert first == third == Delivery("delivered", "HTTP 204")
    assert isinstance(refused, PublishRejected)
    assert len(receiver.received()) == 2


def test_a_retry_after_date_becomes_seconds_from_now() -> None:
    receiver = Receiver(lambda r: (429, {"Retry-After": http_date(30)}, b""))
    try:
        target = Webhook(receiver.url, secret=SECRET, allow_private=True)
        with started(target), pytest.raises(PublishFailed) as raised:
            target.publish(message(1))
        assert raised.value.retry_after is not None
        assert 25 <= raised.value.retry_after <= 31
    finally:
        receiver.close()


def test_retry_after_reads_seconds_dates_and_ignores_nonsense() -> None:
    now = datetime(2026, 1, 1, 12, tzinfo=UTC).timestamp()
    assert retry_after("120", now) == 120.0
    assert retry_after(" 0 ", now) == 0.0
    assert retry_after("Thu, 01 Jan 2026 12:01:00 GMT", now) == 60.0
    assert retry_after("Thu, 01 Jan 2026 11:00:00 GMT", now) == 0.0  # past: at once
    assert retry_after(None) is None
    assert retry_after("soon") is None
    assert retry_after("-5") is None


def test_an_endpoint_that_is_down_fails_quickly_then_the_next_publish_gets_through() -> None:
    receiver = Receiver()
    port = receiver.port
    with started(Webhook(receiver.url, secret=SECRET, timeout=5, allow_private=True)) as target:
        target.publish(message(1))
        receiver.close()
        began = time.monotonic()
        with pytest.raises(PublishFailed, match="cannot reach"):
            target.publish(message(2))
        assert time.monotonic() - began < 5
        back = Receiver(port=port)
        try:
            assert target.publish(message(3)) == Delivery("delivered", "HTTP 204")
            assert len(back.received()) == 1
        finally:
            back.close()


def test_an_endpoint_that_does_not_answer_fails_after_the_timeout() -> None:
    gate = threading.Event()

    def stall(request: Received) -> tuple[int, dict[str, str], bytes]:
        gate.wait(10)
        return 204, {}, b""

    receiver = Receiver(stall)
    try:
        with started(Webhook(receiver.url, secret=SECRET, timeout=0.5, allow_private=True)) as t:
            began = time.monotonic()
            with pytest.raises(PublishFailed, match=r"no answer from .* within 0.5s"):
                t.publish(message(1))
            assert time.monotonic() - began < 3
    finally:
        gate.set()
        receiver.close()


class RawEndpoint:
    """An endpoint that answers each request with the given bytes, then closes the
    connection if told: for the answers a well-behaved server rarely gives."""

    def __init__(self, reply: bytes, close: bool = True) -> None:
        self.reply, self.close_after = reply, close
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.requests = 0
        threading.Thread(target=self.serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}/hooks"

    def serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.listener.accept()
                threading.Thread(target=self.answer, args=(conn,), daemon=True).start()

    def answer(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            reader = conn.makefile("rb")
            while True:
                length = 0
                while (line := reader.readline()) not in (b"\r\n", b""):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                if not line:
                    return
                reader.read(length)
                self.requests += 1
                conn.sendall(self.reply)
                if self.close_after:
                    return

    def stop(self) -> None:
        self.listener.close()


@pytest.mark.parametrize(
    ("reply", "close", "outcome"),
    [
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
         False, "HTTP 200"),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok",
         False, "HTTP 201"),
        (b"HTTP/1.0 200 OK\r\n\r\nbody to the close", True, "HTTP 200"),
        (b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n", True, "HTTP 204"),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 999999999\r\n\r\nnot all", True, "HTTP 200"),
    ],
)  # fmt: skip
def test_answers_of_every_http_framing_are_read(reply: bytes, close: bool, outcome: str) -> None:
    endpoint = RawEndpoint(reply, close)
    try:
        with started(Webhook(endpoint.url, secret=SECRET, allow_private=True)) as target:
            for n in range(3):  # again on the kept connection, or on a new one
                assert target.publish(message(n)) == Delivery("delivered", outcome)
        assert endpoint.requests == 3
    finally:
        endpoint.stop()


def test_a_chunked_refusal_is_kept_as_its_excerpt() -> None:
    reply = b"HTTP/1.1 422 Unprocessable\r\ntransfer-encoding: chunked\r\n\r\n"
    reply += b"5\r\nbad a\r\n6\r\nmount\n\r\n0\r\n\r\n"
    endpoint = RawEndpoint(reply, close=False)
    try:
        target = Webhook(endpoint.url, secret=SECRET, allow_private=True)
        with started(target), pytest.raises(PublishFailed) as raised:
            target.publish(message(1))
        assert raised.value.detail == "HTTP 422: bad amount"
        assert raised.value.status == 422
    finally:
        endpoint.stop()


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (b"SSH-2.0-OpenSSH_9.6\r\n", "answered what is not HTTP"),
        (b"", "closed the connection without answering"),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort", "closed the connection mid-answer"),
        (b"HTTP/1.1 200 OK\r\ncontent-length: ten\r\n\r\n", "not HTTP: .*Content-Length"),
        (
            b"HTTP/1.1 200 OK\r\nx: " + b"y" * 10_000 + b"\r\n\r\n",
            "not HTTP: Got more than 8190 bytes",
        ),
    ],
)
def test_a_broken_answer_fails_the_attempt_and_says_why(reply: bytes, error: str) -> None:
    endpoint = RawEndpoint(reply)
    try:
        target = Webhook(endpoint.url, secret=SECRET, allow_private=True)
        with started(target), pytest.raises(PublishFailed, match=error):
            target.publish(message(1))
    finally:
        endpoint.stop()


def test_a_header_with_a_line_break_is_refused_not_sent(receiver: Receiver) -> None:
    with started(Webhook(receiver.url, secret=SECRET, allow_private=True)) as target:
        with pytest.raises(PublishRejected, match="line break"):
            target.publish(message(1, **{"x-evil": "a\r\nwebhook-id: forged"}))
        assert target.publish(message(2, **{"x-name": "Zoë ✓"})).outcome == "delivered"
    (request,) = receiver.received()
    assert request.headers["x-name"].encode("latin-1").decode() == "Zoë ✓"  # sent as UTF-8


@pytest.fixture
def certificate(tmp_path: Path) -> Path:
    """A self-signed certificate for 127.0.0.1, its key in the same file."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    pem = tmp_path / "endpoint.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(pem), "-out", str(pem)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return pem


def test_https_is_verified_and_a_trusted_endpoint_gets_the_message(certificate: Path) -> None:
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(certificate)
    receiver = Receiver(tls=server)
    try:
        untrusted = Webhook(receiver.url, secret=SECRET, allow_private=True)
        with started(untrusted), pytest.raises(PublishFailed, match="CERTIFICATE_VERIFY_FAILED"):
            untrusted.publish(message(1))
        trusting = Webhook(receiver.url, secret=SECRET, allow_private=True)
        trusting._tls = ssl.create_default_context(cafile=str(certificate))  # as a CA would
        with started(trusting):
            sent = message(2, "k")
            assert trusting.publish(sent) == Delivery("delivered", "HTTP 204")
            assert trusting.publish(message(3, "k")).outcome == "delivered"  # kept alive
        first, second = receiver.received()
        assert verify_webhook(first.body, first.headers, SECRET) == sent.id
        assert first.port == second.port
    finally:
        receiver.close()


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("http://127.0.0.1:9/", "loopback"),
        ("http://[::1]:9/", "loopback"),
        ("https://10.1.2.3/hooks", "private"),
        ("http://192.168.0.10/", "private"),
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("http://0.0.0.0/", "reserved"),
    ],
)
def test_internal_addresses_are_refused_at_construction(url: str, kind: str) -> None:
    with pytest.raises(ConfigurationError, match=f"{kind}.*allow_private=True"):
        Webhook(url, secret=SECRET)


def test_a_name_resolving_to_loopback_is_refused_at_start_and_at_each_publish(
    receiver: Receiver,
) -> None:
    url = f"http://localhost:{receiver.port}/hooks"
    with pytest.raises(ConfigurationError, match=r"localhost resolves to .* \(loopback\)"):
        Webhook(url, secret=SECRET).start(LIMITS)
    target = Webhook(url, secret=SECRET)  # never started: each new connection is checked
    try:
        with pytest.raises(PublishFailed, match="loopback"):
            target.publish(message(1))
    finally:
        target.close()
    assert receiver.received() == []
    with started(Webhook(url, secret=SECRET, allow_private=True)) as allowed:
        assert allowed.publish(message(2)).outcome == "delivered"


@pytest.mark.parametrize(
    ("url", "options", "error"),
    [
        ("partner.example/hooks", {}, "http:// or https:// with a host"),
        ("ftp://partner.example/", {}, "http:// or https://"),
        ("http:///nohost", {}, "with a host"),
        ("https://user:pw@partner.example/", {}, "no user or password"),
        ("https://partner.example:99999/", {}, "port is not a port"),
        ("https://partner.example/", {"timeout": 0}, "timeout is seconds above 0"),
        ("https://partner.example/", {"timeout": "5"}, "timeout is seconds above 0"),
        ("https://partner.example/", {"timeout": float("inf")}, "timeout is seconds above 0"),
        ("https://partner.example/", {"timeout": float("nan")}, "timeout is seconds above 0"),
        # A truthy string would have switched the private-address guard off.
        ("https://partner.example/", {"allow_private": "false"}, "allow_private is True or "),
        ("https://partner.example/", {"allow_private": 1}, "allow_private is True or False"),
        ("https://partner.example:0/", {}, "port is not a port"),
        ("https://partner.exa mple/", {}, "http:// or https:// with a host"),
        ("https://partner.example/", {"secret": "whsec_%%%"}, "not valid base64"),
        ("https://partner.example/", {"secret": []}, "no webhook secret given"),
        (b"https://partner.example/", {}, "url is a str"),
    ],
)
def test_bad_constructor_input_is_refused_with_one_clear_error(
    url: Any, options: dict[str, Any], error: str
) -> None:
    with pytest.raises(ConfigurationError, match=error):
        Webhook(url, **{"secret": SECRET, **options})


def test_a_secret_is_required() -> None:
    with pytest.raises(TypeError, match="secret"):
        Webhook("https://partner.example/")  # type: ignore[call-arg]


def test_without_its_client_the_target_says_which_extra_to_install() -> None:
    code = (
        "import sys; sys.modules['aiohttp'] = None\n"
        "from outbox.publish import Webhook\n"
        "Webhook('https://partner.example/', secret='whsec_AAAA')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1] == (
        "outbox.errors.ConfigurationError: this target needs the 'aiohttp' client: "
        "pip install 'outbox-relay[webhooks]'"
    ), done.stderr


# --- end to end through relays --------------------------------------------------------------


def registry_for(url: str) -> outbox.Registry:
    registry = outbox.Registry()
    registry.destination(
        "partner", Webhook(url, secret=SECRET, timeout=5, allow_private=True),
        max_attempts=50, retry=tenacity.wait_fixed(0.2),
    )  # fmt: skip
    return registry


def publish(engine: sa.Engine, messages: list[tuple[dict[str, Any], str | None]]) -> list[UUID]:
    with Session(engine) as session:
        uuids = [
            outbox.publish.publish(session, "partner", body, key=key, event="transfer.posted").uuid
            for body, key in messages
        ]
        session.commit()
    return uuids


def reasons(engine: sa.Engine, uuid: UUID) -> list[tuple[str, str | None]]:
    """Each history row's event, with its reason, or the error it recorded."""
    return [
        (row.event, row.reason or (json.dumps(row.error) if row.error else None))
        for row in history(engine, uuid)
    ]


def test_a_relay_delivers_in_key_order_and_history_keeps_the_answer(
    db: sa.Engine, receiver: Receiver
) -> None:
    uuids = publish(db, [({"n": n}, f"account:{n % 5}") for n in range(100)])
    with running_relay(registry_for(receiver.url), str(db.url)):
        wait_for(lambda: live_jobs(db) == 0, 30, "every message delivered")
    got = receiver.received()
    assert sorted(r.headers["webhook-id"] for r in got) == sorted(str(u) for u in uuids)
    for key in range(5):
        arrived = [
            json.loads(r.body)["n"] for r in got if r.headers["outbox-key"] == f"account:{key}"
        ]
        assert arrived == list(range(key, 100, 5))
    assert ("succeeded", "delivered: HTTP 204") in reasons(db, uuids[0])


def test_a_410_ends_the_job_dead_with_the_reason_in_history(db: sa.Engine) -> None:
    receiver = Receiver(lambda r: (410, {}, b"this endpoint was deleted"))
    try:
        (uuid,) = publish(db, [({"n": 1}, None)])
        with running_relay(registry_for(receiver.url), str(db.url)):
            wait_for(lambda: "dead" in [e for e, _ in reasons(db, uuid)], 30, "the job dead")
        events = reasons(db, uuid)
        assert events[-1][0] == "dead"
        assert any("HTTP 410 Gone" in (reason or "") for _, reason in events), events
        assert len(receiver.received()) == 1
    finally:
        receiver.close()


def test_an_endpoint_answering_503_for_20_seconds_loses_nothing(db: sa.Engine) -> None:
    back_at = time.monotonic() + 20
    accepted: dict[str, int] = {}

    def answer(request: Received) -> tuple[int, dict[str, str], bytes]:
        if time.monotonic() < back_at:
            return 503, {"Retry-After": "1"}, b"down for maintenance"
        accepted[request.headers["webhook-id"]] = accepted.get(request.headers["webhook-id"], 0) + 1
        return 204, {}, b""

    receiver = Receiver(answer)
    try:
        uuids = publish(db, [({"n": n}, f"account:{n % 4}") for n in range(40)])
        with running_relay(registry_for(receiver.url), str(db.url)):
            wait_for(lambda: live_jobs(db) == 0, 45, "every message delivered after the outage")
        assert accepted == {str(u): 1 for u in uuids}
        assert any(
            event == "retried" and "HTTP 503" in (reason or "")
            for event, reason in reasons(db, uuids[0])
        ), reasons(db, uuids[0])
    finally:
        receiver.close()


@pytest.fixture
def effects(db: sa.Engine) -> sa.Engine:
    with db.begin() as conn:
        conn.execute(sa.text("DROP TABLE IF EXISTS webhook_effects"))
        conn.execute(sa.text("CREATE TABLE webhook_effects (message_id text, n int)"))
    return db


def test_a_relay_killed_after_the_endpoint_took_a_message_resends_it_and_the_inbox_applies_once(
    effects: sa.Engine, dsn: str, tmp_path: Path
) -> None:
    relays: list[subprocess.Popen[bytes]] = []
    killed = threading.Event()

    def consume(request: Received) -> tuple[int, dict[str, str], bytes]:
        """A consumer: verify, then apply once (inbox and effect in one transaction)."""
        message_id = verify_webhook(request.body, request.headers, SECRET)
        with Session(effects) as session:
            if outbox.inbox(session, "ledger-partner", message_id):
                session.execute(
                    sa.text("INSERT INTO webhook_effects VALUES (:id, :n)"),
                    {"id": message_id, "n": json.loads(request.body)["n"]},
                )
            session.commit()
        if not killed.is_set():  # applied, answer not yet sent: the relay dies here
            killed.set()
            os.killpg(relays[0].pid, signal.SIGKILL)
        return 204, {}, b""

    receiver = Receiver(consume)

    def relay() -> subprocess.Popen[bytes]:
        log = (tmp_path / f"relay-{len(relays)}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "outbox", "--dsn", dsn, "relay", "--app",
             "tests.integration.webhook_app:registry", "--metrics-addr", "off"],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "TEST_WEBHOOK_URL": receiver.url, "TEST_WEBHOOK_SECRET": SECRET,
                 "OUTBOX_LEASE": "3s", "OUTBOX_POLL_INTERVAL": "0.2s",
                 "OUTBOX_RESCUE_INTERVAL": "0.5s"},
        )  # fmt: skip
        relays.append(proc)
        return proc

    try:
        uuids = publish(effects, [({"n": n}, "account:1") for n in range(5)])
        relay()
        assert killed.wait(30), "the relay never published"
        relays[0].wait(10)
        relay()
        wait_for(lambda: live_jobs(effects) == 0, 40, "every message delivered after the kill")
        ids = [r.headers["webhook-id"] for r in receiver.received()]
        assert ids.count(str(uuids[0])) == 2  # sent again, under the same id
        assert sorted(set(ids)) == sorted(str(u) for u in uuids)
        with effects.connect() as conn:
            rows = conn.execute(sa.text("SELECT message_id, n FROM webhook_effects ORDER BY n"))
            assert [tuple(row) for row in rows] == [(str(u), n) for n, u in enumerate(uuids)]
    finally:
        for proc in relays:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        receiver.close()
