"""Publishing to RabbitMQ: persistent messages, publisher confirms, ``mandatory`` routing.

One AMQP connection and one confirm-mode channel serve every relay thread. aio-pika runs on
an event loop of its own, in a background thread; each :meth:`RabbitMQ.publish` hands its
message to that loop and waits for the broker's confirm, so the confirms of concurrent
publishes overlap on the channel instead of queueing one round trip behind another.

Delivered means confirmed (DESIGN section 7): the broker acked the message after routing it
to at least one queue. A message that no queue takes is returned (``mandatory``) and ends
the job dead, because publishing it again would be returned again; a nack, a lost
connection or a missing confirm is a failure, retried under the same ``message_id``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import re
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import structlog

from outbox.errors import ConfigurationError
from outbox.publish.loop import LoopThread
from outbox.publish.target import (
    CLAIM_SIZED,
    Delivery,
    Limits,
    Message,
    PublishFailed,
    PublishRejected,
    missing_extra,
)
from outbox.storable import encodable
from outbox.validate import positive_seconds

if TYPE_CHECKING:
    import aiormq
    from aio_pika.abc import AbstractConnection

log = structlog.get_logger("outbox.publish")

#: AMQP's exchange names: letters, digits, hyphen, underscore, period, colon; 255 at most.
_EXCHANGE_NAME = re.compile(r"[A-Za-z0-9_.:\-]{0,255}")
#: After a failed connection attempt, publishes fail at once for this long instead of each
#: trying again (16 relay threads against a broker that is down would queue 16 attempts).
_RECONNECT_PAUSE = 1.0


class RabbitMQ:
    """A RabbitMQ exchange (``""``, the default exchange, routes to the queue named by the
    routing key).

    ``timeout`` bounds a connection attempt and the wait for one message's confirm: a
    publish while the broker is down fails within it, never hangs.
    """

    extra = "rabbitmq"
    batch_size = CLAIM_SIZED

    def __init__(
        self,
        url: str,
        *,
        exchange: str = "",
        routing_key: str = "",
        timeout: float = 10.0,
    ) -> None:
        try:
            import aio_pika  # noqa: F401
        except ImportError:
            raise missing_extra(self.extra, "aio-pika") from None
        self._url = url
        self.address = _check_url(url)
        if not isinstance(exchange, str) or not _EXCHANGE_NAME.fullmatch(exchange):
            raise ConfigurationError(
                f"RabbitMQ exchange {exchange!r} is not an exchange name: up to 255 letters,"
                " digits, '-', '_', '.' or ':' ('' is the default exchange)"
            )
        if isinstance(routing_key, str) and not encodable(routing_key):
            raise ConfigurationError(
                f"RabbitMQ routing_key is not valid text: {routing_key[:40]!r}"
            )
        if not isinstance(routing_key, str) or len(routing_key.encode()) > 255:
            raise ConfigurationError("RabbitMQ routing_key must be a string of at most 255 bytes")
        if exchange == "" and not routing_key:
            raise ConfigurationError(
                "RabbitMQ routing_key is empty: the default exchange (exchange='') routes to"
                " the queue the routing key names; give routing_key='<queue>'"
            )
        if not positive_seconds(timeout):
            raise ConfigurationError(f"RabbitMQ timeout must be seconds above 0, not {timeout!r}")
        self.exchange, self.routing_key, self.timeout = exchange, routing_key, float(timeout)
        self._where = f"exchange {exchange!r} routing key {routing_key!r}"
        self._lock = threading.Lock()
        # Messages handed over by calling threads, not yet taken by the loop.
        self._waiting: list[tuple[Message, concurrent.futures.Future[Delivery]]] = []
        self._wake_pending = False
        self._loop_thread = LoopThread("outbox-rabbitmq", self._reset)
        # The loop's own state, touched only from the loop's thread.
        self._connecting: asyncio.Lock | None = None
        self._connection: AbstractConnection | None = None
        self._channel: aiormq.Channel | None = None
        self._failed_at = -_RECONNECT_PAUSE
        self._failure = ""

    def __repr__(self) -> str:
        where = f"exchange={self.exchange!r}, routing_key={self.routing_key!r}"
        return f"RabbitMQ({self.address!r}, {where})"

    def start(self, limits: Limits) -> None:
        """Connect now, so that a wrong address or a missing exchange shows in the log at
        start-up; a broker that is down is not fatal (publishes fail and are retried)."""
        try:
            self._run(self._ready())
        except PublishFailed as exc:
            log.warning("rabbitmq not reachable at start", target=repr(self), error=exc.detail)

    def publish(self, message: Message) -> Delivery:
        future: concurrent.futures.Future[Delivery] = concurrent.futures.Future()
        with self._lock:
            loop = self._event_loop()
            self._waiting.append((message, future))
            wake, self._wake_pending = not self._wake_pending, True
        if wake:
            # One wake-up of the loop per batch of waiting messages, not one per message.
            loop.call_soon_threadsafe(self._send_waiting)
        try:
            # The publish bounds itself by the timeout; this is the backstop.
            return future.result(2 * self.timeout + 1)
        except concurrent.futures.TimeoutError:
            raise PublishFailed(f"no answer from RabbitMQ at {self.address}") from None

    def publish_many(self, messages: Sequence[Message]) -> list[Delivery | Exception]:
        """The messages of one claim in one hand-over to the loop: all are written to the
        channel before their confirms are awaited together. Each answer is at its message's
        position: a Delivery, or the exception :meth:`publish` would have raised."""
        if not messages:
            return []
        with self._lock:
            loop = self._event_loop()
        future = asyncio.run_coroutine_threadsafe(self._publish_many(messages), loop)
        try:
            # Each publish bounds itself by the timeout; this is the backstop.
            answers: list[Delivery | Exception] = future.result(2 * self.timeout + 1)
        except concurrent.futures.TimeoutError:
            future.cancel()
            failed = PublishFailed(f"no answer from RabbitMQ at {self.address}")
            return [failed] * len(messages)
        return answers

    def close(self) -> None:
        self._loop_thread.close(self._disconnect, self.timeout, "rabbitmq connection")

    # -- the calling threads' side ----------------------------------------------------------

    def _run(self, coroutine: Any) -> Any:
        with self._lock:
            loop = self._event_loop()
        future = asyncio.run_coroutine_threadsafe(coroutine, loop)
        try:
            return future.result(2 * self.timeout + 1)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise PublishFailed(f"no answer from RabbitMQ at {self.address}") from None

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        """The running loop, started on first use (and anew in a forked child)."""
        return self._loop_thread.get()

    def _reset(self) -> None:
        """A new loop starts without connection: the loop's own state."""
        self._connecting = None
        self._connection = None
        self._channel = None
        self._failed_at = -_RECONNECT_PAUSE
        self._failure = ""

    # -- the event loop's side --------------------------------------------------------------

    def _send_waiting(self) -> None:
        with self._lock:
            batch, self._waiting = self._waiting, []
            self._wake_pending = False
        loop = asyncio.get_running_loop()
        for message, future in batch:
            task = loop.create_task(self._publish(message, confirm_timeout=self.timeout))
            task.add_done_callback(functools.partial(_settle, future))

    async def _publish_many(self, messages: Sequence[Message]) -> list[Delivery | Exception]:
        # One deadline for the batch rather than a timer per message (a fifth of the rate).
        tasks = [asyncio.ensure_future(self._publish(m, confirm_timeout=None)) for m in messages]
        await asyncio.wait(tasks, timeout=self.timeout)
        answers: list[Delivery | Exception] = []
        for task in tasks:
            if not task.done():
                task.cancel()
                answers.append(
                    PublishFailed(
                        f"RabbitMQ did not confirm within {self.timeout:g}s ({self._where})"
                    )
                )
                continue
            error = None if task.cancelled() else task.exception()
            if isinstance(error, Exception):
                answers.append(error)
            elif task.cancelled() or error is not None:
                answers.append(PublishFailed("RabbitMQ publish interrupted"))
            else:
                answers.append(task.result())
        return answers

    async def _publish(self, message: Message, *, confirm_timeout: float | None) -> Delivery:
        from aiormq import spec
        from aiormq.exceptions import DeliveryError, PublishError

        channel = await self._ready()
        properties = spec.Basic.Properties(
            message_id=message.id,
            content_type="application/json",
            delivery_mode=2,  # persistent: written to disk by durable queues
            headers=dict(message.wire_headers()),
            message_type=message.event,
            timestamp=message.enqueued_at,
        )
        try:
            # aiormq's channel itself, not aio-pika's Exchange.publish: the message is
            # queued for the connection's writer without waiting for each write to drain,
            # twice the rate with as many publishes in flight. The timeout covers the confirm.
            await channel.basic_publish(
                message.body,
                exchange=self.exchange,
                routing_key=self.routing_key,
                properties=properties,
                mandatory=True,
                timeout=confirm_timeout,
                wait=False,
            )
        except PublishError as exc:
            returned = exc.message.delivery if exc.message is not None else None
            code = getattr(returned, "reply_code", None)
            text = getattr(returned, "reply_text", "") or "returned"
            raise PublishRejected(
                f"unroutable: RabbitMQ returned the message ({code} {text}): no queue is bound"
                f" for {self._where}",
                status=code,
            ) from None
        except DeliveryError as exc:
            raise PublishFailed(
                f"RabbitMQ refused the message ({type(exc.frame).__name__}) for {self._where}"
            ) from None
        except TimeoutError:
            raise PublishFailed(
                f"RabbitMQ did not confirm within {self.timeout:g}s ({self._where})"
            ) from None
        except Exception as exc:  # any client error is a failure, retried
            raise PublishFailed(f"RabbitMQ publish failed: {_describe(exc)}") from None
        return Delivery("delivered", f"confirmed by RabbitMQ: {self._where}")

    async def _ready(self) -> aiormq.Channel:
        """A live confirm-mode channel, reconnecting when there is none."""
        if self._channel is not None and not self._channel.is_closed:
            return self._channel
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._channel is not None and not self._channel.is_closed:
                return self._channel
            if time.monotonic() - self._failed_at < _RECONNECT_PAUSE:
                raise PublishFailed(self._failure)
            try:
                return await asyncio.wait_for(self._open(), self.timeout)
            except Exception as exc:
                # A connection the broker closed may not say so yet: start afresh next time.
                await self._disconnect()
                self._failed_at = time.monotonic()
                self._failure = f"cannot publish through RabbitMQ at {self.address}: " + (
                    "connection timed out" if isinstance(exc, TimeoutError) else _describe(exc)
                )
                raise PublishFailed(self._failure) from None

    async def _open(self) -> aiormq.Channel:
        import aio_pika
        import aiormq

        self._channel = None
        if self._connection is None or self._connection.is_closed:
            await self._disconnect()
            self._connection = await aio_pika.connect(
                self._url,
                timeout=self.timeout,
                client_properties={"connection_name": "outbox publisher"},
            )
        channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
        if self.exchange:
            # Checked once per channel: a missing exchange would close the channel at the
            # first publish; the error here names it.
            await channel.get_exchange(self.exchange, ensure=True)
        underlay = await channel.get_underlay_channel()
        assert isinstance(underlay, aiormq.Channel)
        self._channel = underlay
        return underlay

    async def _disconnect(self) -> None:
        connection, self._connection = self._connection, None
        self._channel = None
        if connection is not None and not connection.is_closed:
            with contextlib.suppress(Exception):  # it is going away anyway
                await asyncio.wait_for(connection.close(), self.timeout)


def _settle(future: concurrent.futures.Future[Delivery], task: asyncio.Task[Delivery]) -> None:
    """Hands a publish's outcome from the loop to the thread waiting on it."""
    if task.cancelled():
        future.set_exception(PublishFailed("publish cancelled: the RabbitMQ target was closed"))
    elif (error := task.exception()) is not None:
        future.set_exception(error)
    else:
        future.set_result(task.result())


def _check_url(url: object) -> str:
    """The URL without its password, for messages; refuses what cannot be an AMQP URL."""
    if not isinstance(url, str) or not url:
        raise ConfigurationError(f"RabbitMQ url must be an amqp:// URL, not {url!r}")
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme not in ("amqp", "amqps") or not parts.hostname or port == -1:
        shown = url if parts.password is None else url.replace(parts.password, "***", 1)
        raise ConfigurationError(
            f"RabbitMQ url {shown!r} is not an AMQP URL: amqp://user:password@host:5672/vhost"
        )
    user = f"{parts.username}@" if parts.username else ""
    netloc = f"{user}{parts.hostname}" + (f":{port}" if port else "")
    return f"{parts.scheme}://{netloc}{parts.path}"


def _describe(exc: BaseException) -> str:
    text = str(exc) or repr(exc)
    return f"{type(exc).__name__}: {text}"


__all__ = ["RabbitMQ"]
