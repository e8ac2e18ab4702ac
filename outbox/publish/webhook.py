"""Publishing to an HTTP endpoint, signed per Standard Webhooks.

The client is aiohttp's ``ClientSession`` (HTTP/1.1, keep-alive, redirects not followed, no
proxies from the environment, TLS verified), run on an asyncio event loop in a background
thread of the target's own: every relay thread hands its messages (``publish_many``) to one
queue on that loop, which 64 senders work through, one request in flight each over the
session's pool of keep-alive connections; a call's thread waits for its answers together.
(httpx's ``AsyncClient`` was measured first: its connection pool made about 550 requests/s
here, against aiohttp's 7,000 and more; figures in docs/howto/publish-webhook.md.) Each
attempt is signed afresh (its timestamp is the attempt's) over the same ``webhook-id``, the
job uuid, which the receiver dedupes on.

Addresses inside the network are refused at the connection itself: the session's connector
resolves the host through a resolver that checks every address it returns, and connects
only to those (TLS still verifies the url's host name).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import email.utils
import functools
import ipaddress
import re
import socket
import ssl
import time
from collections.abc import Iterable, Sequence
from datetime import UTC
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import structlog

from outbox.errors import ConfigurationError
from outbox.publish.loop import Call, LoopThread
from outbox.publish.signing import (
    ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Secrets,
    secret_keys,
    signature,
)
from outbox.publish.target import (
    BATCH,
    Delivery,
    Limits,
    Message,
    PublishFailed,
    PublishRejected,
    missing_extra,
)
from outbox.validate import positive_seconds

if TYPE_CHECKING:
    import aiohttp
    import aiohttp.abc

log = structlog.get_logger("outbox.publish")

#: Headers outbox sets on every request; an application's header of the same name is dropped.
OWN_HEADERS = frozenset(
    {ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER, "idempotency-key", "content-type"}
)
#: Connections kept open to the endpoint, and requests in flight at once from all threads.
POOL = 64
#: A request handed to the loop: its call and position there, the body and the headers.
_Request = tuple[Call, int, bytes, dict[str, str]]
#: How much of a refusing endpoint's answer is read and kept in the job's history.
ANSWER_CHARS = 200
#: An answer's body longer than this is not read: its connection is closed instead.
ANSWER_READ_MAX = 64 * 1024
USER_AGENT = "outbox-relay"
#: Characters no URL may hold as they are: spaces and controls (a CR LF would reach the request
#: line), which urlsplit keeps.
_UNSAFE_IN_URL = re.compile(r"[\x00-\x20\x7f]")


class AddressRefused(Exception):
    """The endpoint's host resolves to an address outbox does not send to."""


def vetted(host: str, port: int) -> list[str]:
    """The addresses of ``host`` a webhook may go to; raises :class:`AddressRefused` when it
    resolves to a private, loopback, link-local or otherwise non-public address.

    Every address is checked: a name that also resolves inside the network is refused,
    since the connection could go to either.
    """
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise AddressRefused(f"cannot resolve {host}: {exc.strerror}") from None
    return _public(host, (str(sockaddr[0]) for *_, sockaddr in found))


def _public(host: str, found: Iterable[str]) -> list[str]:
    """``found``, the addresses ``host`` resolved to, when all are public; else raises."""
    addresses: list[str] = []
    for text in found:
        address = ipaddress.ip_address(text)
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if not address.is_global or address.is_multicast:
            kind = "a private or reserved address"
            if address.is_loopback:
                kind = "loopback"
            elif address.is_link_local:
                kind = "link-local"
            raise AddressRefused(
                f"{host} resolves to {address} ({kind}): webhooks are not sent inside the "
                "network unless the target says Webhook(..., allow_private=True)"
            )
        addresses.append(text)
    return addresses


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


class _Outgoing:
    """One loop's requests waiting for a sender, from every calling thread, and its senders.
    A new loop (after close, in a forked child) gets its own: a sender of an old loop that
    ends late counts against the old one."""

    __slots__ = ("closed", "senders", "tasks", "waiting")

    def __init__(self) -> None:
        self.waiting: collections.deque[_Request] = collections.deque()
        self.senders = 0
        self.tasks: set[asyncio.Task[None]] = set()
        self.closed = False

    def close(self, failure: PublishFailed) -> None:
        """On the loop: no more sending; what waits fails with ``failure`` (retried)."""
        self.closed = True
        while self.waiting:
            call, index, _, _ = self.waiting.popleft()
            call.settle(index, failure)


class Webhook:
    """POST each message to ``url``, signed with ``secret`` (Standard Webhooks).

    ``secret`` is ``whsec_<base64>`` (or raw bytes), or a list of them while one is being
    rotated: each request then carries one signature per secret. ``timeout`` bounds, in
    seconds, each request from its connect to the end of its answer. Hosts resolving to
    private, loopback or link-local addresses are refused, at start and at every new
    connection, unless ``allow_private=True``. Redirects are not followed.
    """

    extra = "webhooks"
    #: Calls of 100 messages, not a claim's 500: a call holds one handler thread while its
    #: requests share the pool's 64 connections, so calls five times larger put five times
    #: as many requests in flight (16 calls of 500: 8,000). At a slow endpoint a call would
    #: then outlast the handler timeout, and its jobs be retried while their requests are out.
    batch_size = BATCH

    def __init__(
        self,
        url: str,
        *,
        secret: Secrets,
        timeout: float = 10.0,
        allow_private: bool = False,
    ) -> None:
        try:
            import aiohttp  # noqa: F401
        except ImportError:
            raise missing_extra("webhooks", "aiohttp") from None
        if not isinstance(url, str):
            raise ConfigurationError(f"a webhook url is a str, not {type(url).__name__}")
        parts = urlsplit(url)
        if (
            parts.scheme not in ("http", "https")
            or not parts.hostname
            or _UNSAFE_IN_URL.search(url) is not None
        ):
            raise ConfigurationError(
                f"a webhook url is http:// or https:// with a host, not {url!r}"
            )
        if parts.username or parts.password:
            raise ConfigurationError(
                "a webhook url carries no user or password: the signature authenticates"
            )
        try:
            port = parts.port
        except ValueError:
            port = 0
        if port is None:
            port = 443 if parts.scheme == "https" else 80
        elif not 0 < port < 65536:
            raise ConfigurationError(f"a webhook url's port is not a port: {url!r}")
        if not positive_seconds(timeout):
            raise ConfigurationError(f"timeout is seconds above 0, not {timeout!r}")
        if not isinstance(allow_private, bool):
            raise ConfigurationError(
                f"allow_private is True or False, not {allow_private!r}: anything else could "
                "switch the private-address guard off by mistake"
            )
        self.url, self.timeout, self.allow_private = url, float(timeout), allow_private
        self._host, self._port = parts.hostname, port
        #: The TLS settings of new connections: the system's CAs, the url's host name.
        self._tls = ssl.create_default_context()
        self._secrets = secret_keys(secret)
        if not allow_private:
            try:
                literal = ipaddress.ip_address(self._host)
            except ValueError:
                literal = None  # a name: resolved at start, and at each connection
            if literal is not None:
                try:
                    vetted(self._host, port)
                except AddressRefused as exc:
                    raise ConfigurationError(str(exc)) from None
        self._loop_thread = LoopThread("outbox-webhook", self._reset)
        # Touched only on the loop's thread.
        self._client: aiohttp.ClientSession | None = None
        self._out = _Outgoing()

    def __repr__(self) -> str:
        return f"Webhook({self.url!r})"

    def start(self, limits: Limits) -> None:
        """Refuse a host that resolves inside the network now (unless allowed)."""
        if not self.allow_private:
            try:
                vetted(self._host, self._port)
            except AddressRefused as exc:
                if not str(exc).startswith("cannot resolve"):
                    raise ConfigurationError(str(exc)) from None
                # DNS may be back by the first publish, which fails and says so if not

    def headers(self, message: Message, timestamp: int) -> dict[str, str]:
        """What a request carries: the application's headers and outbox's own."""
        headers = {
            name: value
            for name, value in message.wire_headers().items()
            if name.lower() not in OWN_HEADERS
        }
        for name, value in headers.items():
            if not name.isprintable() or not value.isprintable() or ":" in name:
                raise PublishRejected(f"header {name[:40]!r} cannot be sent: a line break or colon")
        msg_id = message.id
        headers.update(
            {
                "content-type": "application/json",
                "user-agent": USER_AGENT,
                "accept-encoding": "identity",
                ID_HEADER: msg_id,
                TIMESTAMP_HEADER: str(timestamp),
                SIGNATURE_HEADER: signature(self._secrets, msg_id, timestamp, message.body),
                "idempotency-key": msg_id,
            }
        )
        return headers

    def publish(self, message: Message) -> Delivery:
        answer = self.publish_many([message])[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def publish_many(self, messages: Sequence[Message]) -> list[Delivery | Exception]:
        """Publish ``messages`` (of distinct keys: a claim's) together: they join the loop's
        queue, which :data:`POOL` senders work through (one request in flight each, over the
        pool's connections), and this call waits for their answers together. Answers at
        their messages' positions."""
        now = int(time.time())
        answers: list[Delivery | Exception | None] = []
        signed: list[tuple[int, bytes, dict[str, str]]] = []
        for message in messages:
            try:
                headers = self.headers(message, now)
            except PublishRejected as exc:
                answers.append(exc)
                continue
            signed.append((len(answers), message.body, headers))
            answers.append(None)
        call = Call(answers)
        if signed:
            loop = self._running_loop()
            out = self._out  # this loop's: a new loop (in a forked child) has its own
            # A deque: appended to from any thread, taken from on the loop's.
            out.waiting.extend((call, index, body, headers) for index, body, headers in signed)
            loop.call_soon_threadsafe(self._start_senders, out)
            try:
                # Each request is bounded by timeout; this only guards against a stuck loop.
                call.done.result(self.timeout * (len(signed) + 2))
            except concurrent.futures.TimeoutError:
                call.abandoned = True
                late = self._no_answer()
                return [late if answer is None else answer for answer in list(answers)]
        return [answer for answer in answers if answer is not None]

    def close(self) -> None:
        """Close the pool's connections and stop the loop's thread."""
        self._loop_thread.close(self._close_client, self.timeout, "webhook client")

    # -- the event loop ------------------------------------------------------------------

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop_thread.get()

    def _reset(self) -> None:
        """A new loop (the first, or one in a forked child) starts without a client."""
        self._client, self._out = None, _Outgoing()

    async def _close_client(self) -> None:
        self._out.close(PublishFailed(f"the webhook target for {self.url} was closed"))
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    def _open(self) -> aiohttp.ClientSession:
        import aiohttp
        import yarl

        self._yarl_url = yarl.URL(self.url)  # parsed once, not at every request

        connector = aiohttp.TCPConnector(
            limit=POOL,
            ssl=self._tls,
            resolver=_vetting_resolver(not self.allow_private),
            use_dns_cache=False,  # resolved and vetted afresh at each new connection
        )
        return aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            trust_env=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
        )

    def _start_senders(self, out: _Outgoing) -> None:
        """On the loop: senders for what waits, up to :data:`POOL` at once. A sender sends
        one request at a time until the queue is empty: a request waits in the queue, not on
        a semaphore, and is timed from when a sender takes it (a connection is free for it).
        64 senders took 12,300 requests/s where a task a request behind a semaphore of 64
        took 9,000 (bench/publish_webhook.py, the raw client)."""
        if out.closed:  # handed over as the target closed: nothing sends it any more
            out.close(PublishFailed(f"the webhook target for {self.url} was closed"))
            return
        if self._client is None:
            self._client = self._open()
        loop = asyncio.get_running_loop()
        for _ in range(min(POOL - out.senders, len(out.waiting))):
            out.senders += 1
            task = loop.create_task(self._sender(out, self._client))
            out.tasks.add(task)  # the loop keeps only a weak reference
            task.add_done_callback(functools.partial(self._sender_done, out))

    def _sender_done(self, out: _Outgoing, task: asyncio.Task[None]) -> None:
        out.tasks.discard(task)
        if out.waiting and not out.closed:  # it ended early (cancelled): others go on
            self._start_senders(out)

    async def _sender(self, out: _Outgoing, client: aiohttp.ClientSession) -> None:
        try:
            while out.waiting:
                call, index, body, headers = out.waiting.popleft()
                if call.abandoned:
                    continue
                try:
                    answer = await self._send(client, body, headers)
                except asyncio.CancelledError:
                    call.settle(index, PublishFailed(f"publishing to {self.url} was cancelled"))
                    raise
                except Exception as exc:  # none expected: the message fails, the sender goes on
                    answer = PublishFailed(f"publishing to {self.url} failed: {exc!r}")
                call.settle(index, answer)
        finally:
            out.senders -= 1

    async def _send(
        self, client: aiohttp.ClientSession, body: bytes, headers: dict[str, str]
    ) -> Delivery | Exception:
        """One request, its answer as the job's outcome (a Delivery, or the exception)."""
        import aiohttp

        for again in (True, False):
            try:  # the session's timeout bounds the whole request, its answer read too
                answer = await self._post(client, body, headers)
            except TimeoutError:
                return self._no_answer()
            except AddressRefused as exc:
                return PublishFailed(str(exc))
            except aiohttp.ServerDisconnectedError:
                if again:
                    continue  # a kept-alive connection the endpoint had just closed
                return PublishFailed(
                    f"cannot reach {self.url}: it closed the connection without answering"
                )
            except aiohttp.ClientResponseError as exc:
                what = exc.message.splitlines()[0][:ANSWER_CHARS] if exc.message else ""
                return PublishFailed(f"{self.url} answered what is not HTTP: {what}")
            except aiohttp.ClientPayloadError:
                return PublishFailed(f"{self.url} closed the connection mid-answer")
            except (aiohttp.ClientError, OSError) as exc:
                return PublishFailed(f"cannot reach {self.url}: {exc or type(exc).__name__}")
            try:
                return self._outcome(*answer)
            except (PublishFailed, PublishRejected) as exc:
                return exc
        raise AssertionError("unreachable")

    async def _post(
        self, client: aiohttp.ClientSession, body: bytes, headers: dict[str, str]
    ) -> tuple[int, Any, bytes]:
        """POST ``body``: the answer's status, headers and body. The body is read only as
        far as :data:`ANSWER_READ_MAX` bytes: a longer one's connection is closed instead."""
        async with client.post(
            self._yarl_url, data=body, headers=headers, allow_redirects=False
        ) as response:
            chunks: list[bytes] = []
            length = response.content_length
            if length is None or length <= ANSWER_READ_MAX:
                size = 0
                while size <= ANSWER_READ_MAX and (chunk := await response.content.read(65536)):
                    chunks.append(chunk)
                    size += len(chunk)
            return response.status, response.headers, b"".join(chunks)

    def _no_answer(self) -> PublishFailed:
        return PublishFailed(f"no answer from {self.url} within {self.timeout:g}s")

    def _outcome(self, status: int, headers: Any, body: bytes) -> Delivery:
        """The endpoint's answer as the job's outcome: a Delivery, or raises."""
        if 200 <= status < 300:
            return Delivery("delivered", f"HTTP {status}")
        excerpt = _excerpt(body)
        if status == 410:
            raise PublishRejected(
                f"HTTP 410 Gone: the endpoint takes no more messages{excerpt}", status=status
            )
        if status in (429, 503):
            wait = retry_after(headers.get("retry-after"))
            after = f", Retry-After {wait:.0f}s" if wait is not None else ""
            raise PublishFailed(f"HTTP {status}{after}{excerpt}", status=status, retry_after=wait)
        if 300 <= status < 400:
            location = headers.get("location", "")
            raise PublishFailed(
                f"HTTP {status}: redirect to {location[:ANSWER_CHARS]!r} not followed "
                "(give the target its final url)",
                status=status,
            )
        raise PublishFailed(f"HTTP {status}{excerpt}", status=status)


def _vetting_resolver(vet: bool) -> aiohttp.abc.AbstractResolver:
    """aiohttp's resolver, returning only vetted addresses (when ``vet``): each new
    connection resolves the host and checks every address before the connector connects to
    one, so a name that later resolves inside the network (DNS rebinding) is refused too."""
    import aiohttp
    from aiohttp.abc import AbstractResolver, ResolveResult

    class VettingResolver(AbstractResolver):
        def __init__(self) -> None:
            self._inner = aiohttp.ThreadedResolver()

        async def resolve(
            self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
        ) -> list[ResolveResult]:
            found = await self._inner.resolve(host, port, family)
            if vet:
                _public(host, (result["host"] for result in found))
            return found

        async def close(self) -> None:
            await self._inner.close()

    return VettingResolver()


def _excerpt(raw: bytes) -> str:
    """A short, printable excerpt of what the endpoint answered, for history."""
    text = raw[: ANSWER_CHARS * 4].decode("utf-8", "replace")[:ANSWER_CHARS]
    text = "".join(c if c.isprintable() else " " for c in text).strip()
    return f": {text}" if text else ""


__all__ = ["AddressRefused", "Webhook", "retry_after", "vetted"]
