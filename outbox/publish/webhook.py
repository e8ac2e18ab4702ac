"""Publishing to an HTTP endpoint, signed per Standard Webhooks.

A pool of keep-alive HTTP/1.1 connections serves every relay thread: a publish takes an idle
connection (or opens one), POSTs on it and puts it back, so as many requests are in flight as
threads publish, and none waits for a connection another thread holds. A claim's messages
(``publish_many``) go out together, each on a connection of its own, before their answers
are read. Each attempt is signed afresh (its timestamp is the attempt's) over the same
``webhook-id``, the job uuid, which the receiver dedupes on.

The client is written here on the standard library's sockets, TLS and resolver: a request is
one write, and reading the answer takes a few lines; per request it costs a third of
``http.client``'s CPU and a sixth of httpx's, whose pool also serialised 16 threads to fewer
requests a second than one thread made alone (figures in docs/howto/publish-webhook.md).
It needs nothing installed.
"""

from __future__ import annotations

import contextlib
import email.utils
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Sequence
from datetime import UTC
from typing import BinaryIO
from urllib.parse import urlsplit

from outbox.errors import ConfigurationError
from outbox.publish.signing import (
    ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Secrets,
    secret_keys,
    signature,
)
from outbox.publish.target import Delivery, Limits, Message, PublishFailed, PublishRejected

#: Headers outbox sets on every request; an application's header of the same name is dropped.
OWN_HEADERS = frozenset(
    {ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER, "idempotency-key", "content-type"}
)
#: Idle connections kept open to the endpoint: room for every relay thread, and some to spare.
POOL = 64
#: How much of a refusing endpoint's answer is read and kept in the job's history.
ANSWER_CHARS = 200
#: Requests one publish_many call has in flight at once, each on a connection of its own.
IN_FLIGHT = 16
#: An answer's body longer than this is not read: its connection is closed instead.
ANSWER_READ_MAX = 64 * 1024
USER_AGENT = "outbox-relay"
#: Limits on an answer's status and header lines, and on their number.
LINE_MAX, HEADERS_MAX = 8192, 100


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
    addresses: list[str] = []
    for *_, sockaddr in found:
        address = ipaddress.ip_address(sockaddr[0])
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
        addresses.append(str(sockaddr[0]))
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


class BadAnswer(Exception):
    """The endpoint answered something that is not HTTP/1.x."""


class _Connection:
    """One keep-alive HTTP/1.1 connection to the endpoint, used by one thread at a time.

    It connects only to vetted addresses, checked at each connect on the very addresses then
    connected to, so a name that later resolves inside the network (DNS rebinding) is
    refused too; TLS is verified against the url's host name. A request goes out in one
    write; the answer's status, headers and at most ``ANSWER_READ_MAX`` bytes of its body
    are read (Content-Length, chunked, or up to the close), and the connection is kept only
    when the whole answer was read and the endpoint keeps it open.
    """

    def __init__(
        self, host: str, port: int, timeout: float, tls: ssl.SSLContext | None, vet: bool
    ) -> None:
        self.host, self.port, self.timeout, self._tls, self._vet = host, port, timeout, tls, vet
        name = f"[{host}]" if ":" in host else host
        self.authority = name if port == (443 if tls else 80) else f"{name}:{port}"
        self._sock: socket.socket | None = None
        self._file: BinaryIO | None = None

    def connect(self) -> None:
        addresses = vetted(self.host, self.port) if self._vet else [self.host]
        error: OSError | None = None
        for address in addresses:
            try:
                sock = socket.create_connection((address, self.port), self.timeout)
                break
            except OSError as exc:
                error = exc
        else:
            assert error is not None
            raise error
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._tls is not None:
            try:
                sock = self._tls.wrap_socket(sock, server_hostname=self.host)
            except BaseException:
                sock.close()
                raise
        self._sock, self._file = sock, sock.makefile("rb")

    def post(
        self, path: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, dict[str, str], bytes, bool]:
        """Send one POST; its status, headers, body (perhaps cut) and whether to keep the
        connection."""
        self.send(path, body, headers)
        return self.answer()

    def send(self, path: str, body: bytes, headers: dict[str, str]) -> None:
        """Write one POST, in one call; :meth:`answer` reads what the endpoint answers."""
        if self._sock is None:
            self.connect()
        assert self._sock is not None
        self._sock.settimeout(self.timeout)
        head = [f"POST {path} HTTP/1.1", f"host: {self.authority}", f"content-length: {len(body)}"]
        head.extend(f"{name}: {value}" for name, value in headers.items())
        self._sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body)

    def timeout_at(self, deadline: float) -> None:
        """Wait for the answer until ``deadline`` (monotonic) at the latest."""
        assert self._sock is not None
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        self._sock.settimeout(left)

    def _line(self) -> bytes:
        assert self._file is not None
        line = self._file.readline(LINE_MAX + 1)
        if not line:
            raise ConnectionResetError("the endpoint closed the connection without answering")
        if len(line) > LINE_MAX:
            raise BadAnswer("a line of the answer is too long")
        return line

    def answer(self) -> tuple[int, dict[str, str], bytes, bool]:
        """The status, headers, body (perhaps cut) and whether to keep the connection."""
        assert self._file is not None
        while True:  # past any 1xx interim answer
            version, _, rest = self._line().partition(b" ")
            code = rest[:3]
            if not version.startswith(b"HTTP/1.") or not code.isdigit():
                raise BadAnswer(f"not an HTTP/1.x answer: {version[:20]!r}")
            status = int(code)
            headers: dict[str, str] = {}
            for _ in range(HEADERS_MAX):
                line = self._line()
                if line in (b"\r\n", b"\n"):
                    break
                name, _, value = line.partition(b":")
                headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
            else:
                raise BadAnswer(f"more than {HEADERS_MAX} headers")
            if status >= 200:
                break
        keep = version == b"HTTP/1.1" and "close" not in headers.get("connection", "").lower()
        if status in (204, 304):
            body = b""
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            body, whole = self._chunks()
            keep = keep and whole
        elif (length := headers.get("content-length")) is not None:
            if not length.isdigit():
                raise BadAnswer(f"content-length {length[:20]!r}")
            if int(length) > ANSWER_READ_MAX:
                body, keep = b"", False  # not worth reading: drop the connection instead
            else:
                body = self._file.read(int(length))
                if len(body) < int(length):
                    raise ConnectionResetError("the endpoint closed the connection mid-answer")
        else:  # the body runs to the close
            body, keep = self._file.read(ANSWER_READ_MAX), False
        return status, headers, body, keep

    def _chunks(self) -> tuple[bytes, bool]:
        """A chunked body, up to ``ANSWER_READ_MAX`` bytes; and whether it was all read."""
        assert self._file is not None
        parts: list[bytes] = []
        total = 0
        while True:
            size_text = self._line().split(b";")[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise BadAnswer(f"chunk size {size_text[:20]!r}") from None
            if size == 0:
                while self._line() not in (b"\r\n", b"\n"):
                    pass  # trailers
                return b"".join(parts), True
            total += size
            if total > ANSWER_READ_MAX:
                return b"".join(parts), False
            parts.append(self._file.read(size))
            self._line()  # the chunk's CRLF

    def close(self) -> None:
        for closing in (self._file, self._sock):
            if closing is not None:
                with contextlib.suppress(OSError):
                    closing.close()
        self._sock = self._file = None


class Webhook:
    """POST each message to ``url``, signed with ``secret`` (Standard Webhooks).

    ``secret`` is ``whsec_<base64>`` (or raw bytes), or a list of them while one is being
    rotated: each request then carries one signature per secret. ``timeout`` bounds, in
    seconds, the connect and each wait for the endpoint's answer. Hosts resolving to private,
    loopback or link-local addresses are refused, at start and at every new connection,
    unless ``allow_private=True``. Redirects are not followed.
    """

    extra = "webhooks"

    def __init__(
        self,
        url: str,
        *,
        secret: Secrets,
        timeout: float = 10.0,
        allow_private: bool = False,
    ) -> None:
        if not isinstance(url, str):
            raise ConfigurationError(f"a webhook url is a str, not {type(url).__name__}")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigurationError(
                f"a webhook url is http:// or https:// with a host, not {url!r}"
            )
        if parts.username or parts.password:
            raise ConfigurationError(
                "a webhook url carries no user or password: the signature authenticates"
            )
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise ConfigurationError(f"a webhook url's port is not a port: {url!r}") from None
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
            raise ConfigurationError(f"timeout is seconds above 0, not {timeout!r}")
        self.url, self.timeout, self.allow_private = url, float(timeout), allow_private
        self._host, self._port = parts.hostname, port
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._tls = ssl.create_default_context() if parts.scheme == "https" else None
        self._secrets = secret_keys(secret)
        self._idle: list[_Connection] = []
        self._lock = threading.Lock()
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
                ID_HEADER: msg_id,
                TIMESTAMP_HEADER: str(timestamp),
                SIGNATURE_HEADER: signature(self._secrets, msg_id, timestamp, message.body),
                "idempotency-key": msg_id,
            }
        )
        return headers

    def publish(self, message: Message) -> Delivery:
        headers = self.headers(message, int(time.time()))
        with self._lock:
            connection = self._idle.pop() if self._idle else None
        reused = connection is not None
        while True:
            connection = connection or self._new()
            try:
                connection.send(self._path, message.body, headers)
                answer = connection.answer()
            except OSError as exc:
                connection.close()
                connection = None
                if reused and isinstance(exc, ConnectionResetError | BrokenPipeError):
                    reused = False  # the endpoint closed an idle connection: once more
                    continue
                raise self._failure(exc) from None
            except (AddressRefused, BadAnswer) as exc:
                connection.close()
                raise self._failure(exc) from None
            break
        self._put_back(connection, answer[3])
        return self._outcome(answer)

    def publish_many(self, messages: Sequence[Message]) -> list[Delivery | Exception]:
        """Publish ``messages`` (of distinct keys: a claim's) together: each request goes out
        on a connection of its own, up to :data:`IN_FLIGHT` at once, before their answers are
        read, so they wait for the endpoint together. The wait for the answers of one round
        is bounded by ``timeout`` as a whole. Answers at their messages' positions."""
        answers: list[Delivery | Exception] = []
        for start in range(0, len(messages), IN_FLIGHT):
            answers.extend(self._round(messages[start : start + IN_FLIGHT]))
        return answers

    def _round(self, messages: Sequence[Message]) -> list[Delivery | Exception]:
        now = int(time.time())
        sent: list[_Connection | None] = []
        for message in messages:
            with self._lock:
                connection = self._idle.pop() if self._idle else None
            connection = connection or self._new()
            try:
                connection.send(self._path, message.body, self.headers(message, now))
                sent.append(connection)
            except Exception:  # sent again alone below, which says why
                connection.close()
                sent.append(None)
        deadline = time.monotonic() + self.timeout
        answers: list[Delivery | Exception] = []
        for message, connection in zip(messages, sent, strict=True):
            if connection is None:  # a stale or refused connection: alone, with its retry
                answers.append(self._alone(message))
                continue
            try:
                connection.timeout_at(deadline)
                answer = connection.answer()
            except (ConnectionResetError, BrokenPipeError):  # closed while idle, perhaps
                connection.close()
                answers.append(self._alone(message))
                continue
            except (OSError, AddressRefused, BadAnswer) as exc:
                connection.close()
                answers.append(self._failure(exc))
                continue
            self._put_back(connection, answer[3])
            try:
                answers.append(self._outcome(answer))
            except (PublishFailed, PublishRejected) as exc:
                answers.append(exc)
        return answers

    def _alone(self, message: Message) -> Delivery | Exception:
        try:
            return self.publish(message)
        except (PublishFailed, PublishRejected) as exc:
            return exc

    def _new(self) -> _Connection:
        return _Connection(self._host, self._port, self.timeout, self._tls, not self.allow_private)

    def _put_back(self, connection: _Connection, keep: bool) -> None:
        if keep:
            with self._lock:
                if len(self._idle) < POOL:
                    self._idle.append(connection)
                    return
        connection.close()

    def _failure(self, exc: Exception) -> PublishFailed:
        """A request that got no answer, as the failure its job records."""
        if isinstance(exc, AddressRefused):
            return PublishFailed(str(exc))
        if isinstance(exc, TimeoutError):
            return PublishFailed(f"no answer from {self.url} within {self.timeout:g}s")
        if isinstance(exc, BadAnswer):
            return PublishFailed(f"{self.url} answered what is not HTTP: {exc}")
        return PublishFailed(f"cannot reach {self.url}: {exc or type(exc).__name__}")

    def _outcome(self, answer: tuple[int, dict[str, str], bytes, bool]) -> Delivery:
        """The endpoint's answer as the job's outcome: a Delivery, or raises."""
        status, headers, body, _ = answer
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

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()


def _excerpt(raw: bytes) -> str:
    """A short, printable excerpt of what the endpoint answered, for history."""
    text = raw[: ANSWER_CHARS * 4].decode("utf-8", "replace")[:ANSWER_CHARS]
    text = "".join(c if c.isprintable() else " " for c in text).strip()
    return f": {text}" if text else ""


__all__ = ["AddressRefused", "Webhook", "retry_after", "vetted"]
