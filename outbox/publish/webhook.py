"""Publishing to an HTTP endpoint, signed per Standard Webhooks.

One ``httpx.Client`` with a pool of keep-alive connections serves every relay thread: a
publish is one POST on a connection already open, and as many are in flight as threads
publish. Each attempt is signed afresh (its timestamp is the attempt's) over the same
``webhook-id``, the job uuid, which the receiver dedupes on.
"""

from __future__ import annotations

import email.utils
import ipaddress
import socket
import time
from collections.abc import Iterable
from datetime import UTC
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from outbox.errors import ConfigurationError
from outbox.publish.signing import (
    ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Secrets,
    secret_keys,
    sign,
)
from outbox.publish.target import (
    Delivery,
    Limits,
    Message,
    PublishFailed,
    PublishRejected,
    missing_extra,
)

if TYPE_CHECKING:
    import httpx

#: Headers outbox sets on every request; an application's header of the same name is dropped.
OWN_HEADERS = frozenset(
    {ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER, "idempotency-key", "content-type"}
)
#: Connections kept open to the endpoint: room for every relay thread, and some to spare.
POOL = 64
#: How much of a refusing endpoint's answer is kept in the job's history.
ANSWER_CHARS = 200


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


def _answer(response: httpx.Response) -> str:
    """A short, printable excerpt of what the endpoint answered, for history."""
    try:
        text = response.text
    except Exception:  # an undecodable body says nothing useful
        return ""
    text = "".join(c if c.isprintable() else " " for c in text[:ANSWER_CHARS]).strip()
    return f": {text}" if text else ""


class Webhook:
    """POST each message to ``url``, signed with ``secret`` (Standard Webhooks).

    ``secret`` is ``whsec_<base64>`` (or raw bytes), or a list of them while one is being
    rotated: each request then carries one signature per secret. ``timeout`` bounds each
    request in seconds. Hosts resolving to private, loopback or link-local addresses are
    refused, at start and at every new connection, unless ``allow_private=True``.
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
        try:
            import httpx
        except ImportError:
            raise missing_extra("webhooks", "httpx") from None
        self._httpx = httpx
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
        self._secrets = secret_keys(secret)
        self._client: httpx.Client | None = None
        if not allow_private:
            try:
                literal = ipaddress.ip_address(self._host)
            except ValueError:
                literal = None  # a name: resolved at start
            if literal is not None:
                try:
                    vetted(self._host, port)
                except AddressRefused as exc:
                    raise ConfigurationError(str(exc)) from None

    def __repr__(self) -> str:
        return f"Webhook({self.url!r})"

    def start(self, limits: Limits) -> None:
        """Check where the host resolves now, and open the connection pool."""
        if not self.allow_private:
            try:
                vetted(self._host, self._port)
            except AddressRefused as exc:
                if not str(exc).startswith("cannot resolve"):
                    raise ConfigurationError(str(exc)) from None
                # DNS may be back by the first publish, which fails and says so if not
        self._connect()

    def _connect(self) -> httpx.Client:
        if self._client is None:
            httpx = self._httpx
            pool = httpx.Limits(max_connections=POOL, max_keepalive_connections=POOL)
            self._client = httpx.Client(
                transport=_transport(self.allow_private, pool),
                timeout=self.timeout,
                follow_redirects=False,
                trust_env=False,  # a proxy from the environment would bypass the address check
                headers={"user-agent": "outbox-relay"},
            )
        return self._client

    def headers(self, message: Message, timestamp: int) -> dict[str, str]:
        """What a request carries: the application's headers and outbox's own."""
        headers = {
            name: value
            for name, value in message.wire_headers().items()
            if name.lower() not in OWN_HEADERS
        }
        headers.update(
            {
                "content-type": "application/json",
                ID_HEADER: message.id,
                TIMESTAMP_HEADER: str(timestamp),
                SIGNATURE_HEADER: sign(self._secrets, message.id, timestamp, message.body),
                "idempotency-key": message.id,
            }
        )
        return headers

    def publish(self, message: Message) -> Delivery:
        httpx = self._httpx
        client = self._client or self._connect()
        headers = self.headers(message, int(time.time()))
        try:
            response = client.post(self.url, content=message.body, headers=headers)
        except AddressRefused as exc:
            raise PublishFailed(str(exc)) from None
        except httpx.TimeoutException:
            raise PublishFailed(f"no answer from {self.url} within {self.timeout:g}s") from None
        except httpx.HTTPError as exc:
            raise PublishFailed(f"cannot reach {self.url}: {exc or type(exc).__name__}") from None
        status = response.status_code
        if 200 <= status < 300:
            return Delivery("delivered", f"HTTP {status}")
        if status == 410:
            raise PublishRejected(
                f"HTTP 410 Gone: the endpoint takes no more messages{_answer(response)}",
                status=status,
            )
        if status in (429, 503):
            wait = retry_after(response.headers.get("retry-after"))
            after = f", Retry-After {wait:.0f}s" if wait is not None else ""
            raise PublishFailed(
                f"HTTP {status}{after}{_answer(response)}", status=status, retry_after=wait
            )
        if 300 <= status < 400:
            where = response.headers.get("location", "")
            raise PublishFailed(
                f"HTTP {status}: redirect to {where[:ANSWER_CHARS]!r} not followed "
                "(give the target its final url)",
                status=status,
            )
        raise PublishFailed(f"HTTP {status}{_answer(response)}", status=status)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def _transport(allow_private: bool, limits: httpx.Limits) -> httpx.HTTPTransport:
    """httpx's transport, whose connections go only to addresses :func:`vetted` passes."""
    import httpcore
    import httpx

    class Guarded(httpcore.SyncBackend):
        # Checked at each new connection, on the very addresses then connected to: a name
        # that resolves inside the network later (DNS rebinding) is refused too.
        def connect_tcp(
            self,
            host: str,
            port: int,
            timeout: float | None = None,
            local_address: str | None = None,
            socket_options: Iterable[Any] | None = None,
        ) -> httpcore.NetworkStream:
            if allow_private:
                return super().connect_tcp(host, port, timeout, local_address, socket_options)
            error: Exception | None = None
            for address in vetted(host, port):
                try:
                    return super().connect_tcp(
                        address, port, timeout, local_address, socket_options
                    )
                except httpcore.ConnectError as exc:
                    error = exc
            assert error is not None  # vetted() returns at least one address
            raise error

    class GuardedTransport(httpx.HTTPTransport):
        def __init__(self) -> None:
            super().__init__(limits=limits, trust_env=False)
            self._pool = httpcore.ConnectionPool(
                ssl_context=httpx.create_ssl_context(trust_env=False),
                max_connections=limits.max_connections,
                max_keepalive_connections=limits.max_keepalive_connections,
                keepalive_expiry=limits.keepalive_expiry,
                network_backend=Guarded(),
            )

    return GuardedTransport()


__all__ = ["AddressRefused", "Webhook", "retry_after", "vetted"]
