"""Publishing to NATS JetStream: ``NatsJetStream(url, subject=...)``.

The job's uuid is the ``Nats-Msg-Id`` header on every attempt, so JetStream itself drops a
re-publish (after a relay died between the PubAck and the completion, or after an ack lost
to a timeout) for as long as the stream's duplicate window lasts; such a PubAck says
``duplicate`` and counts as delivered. ``start`` reads that window and warns when it is
shorter than the relay's lease plus its longest backoff: past the window a re-publish would
be stored a second time, and only the consumer's inbox would catch it.

nats-py is an asyncio client. One connection serves every relay thread from an event loop
of its own in a background thread: each :meth:`NatsJetStream.publish` hands its message to
that loop and waits for its PubAck, so the acks of concurrent calls overlap on the one
connection instead of queueing behind each other.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import itertools
import json
import re
import string
import threading
from collections.abc import Coroutine, Sequence
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import structlog

from outbox.errors import ConfigurationError
from outbox.publish.loop import Call, LoopThread
from outbox.publish.target import (
    CLAIM_SIZED,
    Delivery,
    Limits,
    Message,
    PublishFailed,
    PublishRejected,
    missing_extra,
)
from outbox.validate import positive_seconds

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js.client import JetStreamContext

log = structlog.get_logger("outbox.publish")

T = TypeVar("T")

SCHEMES = ("nats", "tls", "ws", "wss")
#: Fields a subject template may name.
FIELDS = ("key", "event")
#: A subject token: no whitespace, no dot; wildcards are refused separately.
TOKEN = re.compile(r"[^\s.]+")
#: Header names as NATS (and HTTP) accept them.
HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: JetStream error codes that no retry can change: the message is larger than the stream
#: accepts (10054), the stream that took the subject is not the one expected (10060).
PERMANENT_ERRORS = frozenset({10054, 10060})


#: A message handed to the loop: subject, body, headers, and where its answer goes.
_Queued = tuple[str, bytes, dict[str, str], Call, int]


def _connect_options(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` once each is one ``nats.connect`` takes: a misspelt one would otherwise
    fail every connection attempt, at the relay's start and at each publish after."""
    from nats.aio.client import Client

    known = set(inspect.signature(Client.connect).parameters) - {"self", "servers"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigurationError(
            f"NatsJetStream: nats.connect takes no option {', '.join(map(repr, unknown))}; "
            "its options are listed in nats-py's Client.connect"
        )
    return options


class NatsJetStream:
    """Publishes each message to a JetStream subject and waits for its PubAck.

    ``subject`` is a subject, or a template naming ``{key}`` or ``{event}``
    (``"orders.{key}"``): a message whose key (or event) the template needs but lacks, or
    whose key is not a valid subject token, is rejected and its job ends dead with the reason.
    ``timeout`` bounds the connection and each PubAck, in seconds. Other keyword arguments go
    to ``nats.connect`` (``user_credentials``, ``tls``, ``token``...).
    """

    extra = "nats"
    batch_size = CLAIM_SIZED

    def __init__(self, url: str, subject: str, *, timeout: float = 5.0, **options: Any) -> None:
        try:
            import nats  # noqa: F401
        except ImportError:
            raise missing_extra("nats", "nats-py") from None
        self.servers = _servers(url)
        self.subject = subject
        self._parts = _template(subject)
        if not positive_seconds(timeout):
            raise ConfigurationError(
                f"NatsJetStream timeout must be a number of seconds above 0, not {timeout!r}"
            )
        self.timeout = float(timeout)
        self.options = _connect_options(options)
        self._lock = threading.Lock()
        self._loop_thread = LoopThread("outbox-nats", self._reset)
        # Touched only on the loop's thread.
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._connecting: asyncio.Lock | None = None
        self._limits: Limits | None = None
        self._window_checked = False
        self._queue: list[_Queued] = []
        self._sending = False
        self._sender: asyncio.Task[None] | None = None
        self._closing = False
        self._inbox = ""
        self._tokens = itertools.count()
        # PubAcks awaited, by token, in the order sent: (call, index, subject, deadline).
        self._acks: dict[str, tuple[Call, int, str, float]] = {}
        # One timer for every ack's deadline (the oldest's), not one per message.
        self._sweep: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        return f"NatsJetStream({','.join(self.servers)!r}, subject={self.subject!r})"

    # -- the Target protocol ------------------------------------------------------------

    def start(self, limits: Limits) -> None:
        """Connect, and check the stream's duplicate window against ``limits``. A NATS that
        does not answer yet is not an error: publishes fail and are retried until it does,
        and the window is checked at the first connection."""
        self._limits = limits
        try:
            # The connection, then the stream's name and its settings: each within timeout.
            self._run(self._connected(), self.timeout * 3 + 1)
        except PublishFailed as error:
            log.warning(
                "nats unreachable at start; publishes will be retried until it answers",
                target=repr(self),
                error=error.detail,
            )

    def publish(self, message: Message) -> Delivery:
        answer = self.publish_many([message])[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def publish_many(self, messages: Sequence[Message]) -> list[Delivery | Exception]:
        """Queue every message for the loop, which sends them in one go, then wait for their
        PubAcks together. Answers at their messages' positions."""
        answers: list[Delivery | Exception | None] = []
        sendable: list[tuple[str, bytes, dict[str, str], int]] = []
        for index, message in enumerate(messages):
            try:  # a message that cannot be sent is refused alone, not its batch
                subject, headers = self.subject_for(message), _headers(message)
            except PublishRejected as exc:
                answers.append(exc)
                continue
            answers.append(None)
            sendable.append((subject, message.body, headers, index))
        call = Call(answers)
        if sendable:
            loop = self._running_loop()
            # Calls from all threads queue here; the loop sends each queue in one go, so a
            # burst costs one wake-up of the loop, not one per message.
            with self._lock:
                self._queue.extend((s, b, h, call, i) for s, b, h, i in sendable)
                wake, self._sending = not self._sending, True
            if wake:
                loop.call_soon_threadsafe(self._send_queue)
        try:
            # Each PubAck is bounded by the timeout on the loop; this is the backstop.
            call.done.result(self.timeout * 2 + 1)
        except concurrent.futures.TimeoutError:
            late = PublishFailed(f"no PubAck from JetStream within {self.timeout:g}s")
            return [late if answer is None else answer for answer in list(call.answers)]
        return [answer for answer in call.answers if answer is not None]

    def close(self) -> None:
        """Send what is buffered, close the connection and stop the loop's thread."""
        self._loop_thread.close(self._disconnect, self.timeout + 1, "nats connection")

    # -- subjects and headers -----------------------------------------------------------

    def subject_for(self, message: Message) -> str:
        """The subject ``message`` goes to; PublishRejected when the template cannot make one."""
        pieces: list[str] = []
        for literal, field in self._parts:
            pieces.append(literal)
            if field is None:
                continue
            value = message.key if field == "key" else message.event
            if value is None:
                raise PublishRejected(
                    f"subject {self.subject!r} needs the message's {field}, and it has none:"
                    f" publish it with {field}=..."
                )
            if not all(TOKEN.fullmatch(t) and t not in ("*", ">") for t in value.split(".")):
                raise PublishRejected(
                    f"{field} {value!r} cannot be part of subject {self.subject!r}: a NATS"
                    " subject token has no whitespace, is not * or >, and dots may not"
                    " begin, end or repeat"
                )
            pieces.append(value)
        return "".join(pieces)

    # -- the loop -----------------------------------------------------------------------

    def _run(self, coroutine: Coroutine[Any, Any, T], timeout: float) -> T:
        future = asyncio.run_coroutine_threadsafe(coroutine, self._running_loop())
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise PublishFailed(f"no answer from NATS within {timeout:g}s") from None

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop_thread.get()

    def _reset(self) -> None:
        """A new loop (the first, or one in a forked child) starts without connection."""
        with self._lock:
            self._nc = self._js = None
            self._connecting = None
            self._window_checked = False
            self._queue, self._sending, self._closing = [], False, False
            self._acks = {}
            self._sweep = None

    async def _connected(self) -> JetStreamContext:
        """The JetStream context, connecting first when there is no open connection (at
        the first publish, and after nats-py gave up reconnecting)."""
        import nats

        if self._js is not None and self._nc is not None and not self._nc.is_closed:
            return self._js
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._js is not None and self._nc is not None and not self._nc.is_closed:
                return self._js
            options: dict[str, Any] = {
                "allow_reconnect": True,
                "connect_timeout": self.timeout,
                "reconnect_time_wait": 0.5,
                "max_reconnect_attempts": -1,
                "error_cb": self._on_error,
                "disconnected_cb": self._on_disconnected,
                "reconnected_cb": self._on_reconnected,
                **self.options,
            }
            try:
                nc = await asyncio.wait_for(
                    nats.connect(self.servers, **options),
                    self.timeout,
                )
            except Exception as error:
                raise PublishFailed(
                    f"cannot connect to NATS at {','.join(self.servers)}: {_describe(error)}"
                ) from None
            # PubAcks come back to one subscription of this connection, each to the token
            # its message was sent with (nats-py restores the subscription on reconnecting).
            self._inbox = f"{nc.new_inbox()}."
            await nc.subscribe(f"{self._inbox}*", cb=self._on_ack)
            self._nc, self._js = nc, nc.jetstream(timeout=self.timeout)
        if not self._window_checked and self._limits is not None:
            self._window_checked = True
            await self._check_window(self._limits)
        return self._js

    def _send_queue(self) -> None:
        self._sender = asyncio.get_running_loop().create_task(self._send())

    async def _send(self) -> None:
        """Send every queued message without waiting for acks in between: JetStream's
        async publish, each ack resolving its caller's future when it comes."""
        batch: list[_Queued] = []
        try:
            while True:
                with self._lock:
                    batch, self._queue = self._queue, []
                    if not batch:
                        self._sending = False
                        return
                try:
                    await self._connected()
                except PublishFailed as error:
                    for *_, call, index in batch:
                        call.settle(index, error)
                    continue
                nc = self._nc
                assert nc is not None
                loop = asyncio.get_running_loop()
                deadline = loop.time() + self.timeout
                for subject, body, headers, call, index in batch:
                    token = str(next(self._tokens))
                    self._acks[token] = (call, index, subject, deadline)
                    try:
                        await nc.publish(subject, body, reply=self._inbox + token, headers=headers)
                    except Exception as error:
                        self._acks.pop(token, None)
                        call.settle(index, self._failure(error, subject))
                if self._sweep is None and self._acks:
                    self._sweep = loop.call_at(deadline, self._expire)
        except BaseException as error:
            # Never leave callers waiting on a sender that is gone.
            with self._lock:
                batch, self._queue, self._sending = batch + self._queue, [], False
            failed = PublishFailed(f"publish to NATS failed: {_describe(error)}")
            for *_, call, index in batch:
                call.settle(index, failed)
            raise

    async def _on_ack(self, reply: Any) -> None:
        import nats.js.api
        import nats.js.errors

        entry = self._acks.pop(reply.subject[len(self._inbox) :], None)
        if entry is None:  # expired already
            return
        call, index, subject, _ = entry
        if reply.headers and reply.headers.get(nats.js.api.Header.STATUS) == "503":
            call.settle(index, self._failure(nats.js.errors.NoStreamResponseError(), subject))
            return
        try:
            answer = json.loads(reply.data)
            if "error" in answer:
                error = answer["error"]
                refused = nats.js.errors.APIError(
                    code=error.get("code"),
                    description=error.get("description"),
                    err_code=error.get("err_code"),
                )
                call.settle(index, self._failure(refused, subject))
                return
            # A PubAck: {"stream": ..., "seq": ..., "duplicate": true when already stored}
            detail = f"stream {answer['stream']} seq {answer['seq']}"
            delivery = (
                Delivery("duplicate", detail)
                if answer.get("duplicate")
                else Delivery("delivered", detail)
            )
        except Exception as error:  # an answer that is no PubAck
            call.settle(index, PublishFailed(f"unreadable PubAck: {_describe(error)}"))
            return
        call.settle(index, delivery)

    def _expire(self) -> None:
        """Acks that never came (the server down, the connection lost) fail their publishes,
        which are retried; if a message was stored after all, its retry is a duplicate.
        Acks wait in the order they were sent, so the oldest deadlines come first; the
        timer is set again for the oldest still waiting."""
        self._sweep = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        while self._acks:
            token, (call, index, subject, deadline) = next(iter(self._acks.items()))
            if deadline > now:
                self._sweep = loop.call_at(deadline, self._expire)
                return
            del self._acks[token]
            call.settle(
                index,
                PublishFailed(
                    f"no PubAck from JetStream within {self.timeout:g}s (subject {subject!r})"
                ),
            )

    def _failure(self, error: BaseException, subject: str) -> PublishFailed | PublishRejected:
        """What a nats-py error means for the job: retried, or dead with the reason."""
        import nats.errors
        import nats.js.errors

        if isinstance(error, nats.js.errors.NoStreamResponseError):
            return PublishFailed(
                f"no JetStream stream takes subject {subject!r}: create one whose subjects"
                " cover it; the job is retried until then"
            )
        if isinstance(error, nats.js.errors.APIError):
            detail = f"JetStream refused the message: {error.description} (error {error.err_code})"
            if error.err_code in PERMANENT_ERRORS:
                return PublishRejected(detail, status=error.code)
            return PublishFailed(detail, status=error.code)
        if isinstance(
            error,
            nats.errors.MaxPayloadError | nats.errors.BadSubjectError | nats.errors.BadHeaderError,
        ):
            return PublishRejected(f"NATS refused the message: {_describe(error)}")
        if isinstance(error, nats.errors.TimeoutError | asyncio.TimeoutError):
            return PublishFailed(
                f"no PubAck from JetStream within {self.timeout:g}s (subject {subject!r})"
            )
        return PublishFailed(f"publish to NATS failed: {_describe(error)}")

    async def _check_window(self, limits: Limits) -> None:
        """Warn when a re-publish could come after the stream forgot the first one."""
        import nats.js.errors

        assert self._js is not None
        probe = "".join(literal + ("*" if field else "") for literal, field in self._parts)
        try:
            name = await self._js.find_stream_name_by_subject(probe)
            info = await self._js.stream_info(name)
        except nats.js.errors.NotFoundError:
            log.warning(
                "no JetStream stream takes this subject; publishes fail until one does",
                target=repr(self),
                subject=probe,
            )
            return
        except Exception as error:
            log.warning(
                "could not read the stream's duplicate window",
                target=repr(self),
                error=_describe(error),
            )
            return
        window = info.config.duplicate_window or 0.0
        needed = limits.lease_seconds + limits.longest_backoff_seconds
        if window < needed:
            log.warning(
                f"JetStream stream {name!r} forgets message ids after {window:g}s, but a"
                f" message may be published again up to {needed:g}s after its first publish"
                " (the relay's lease plus its longest backoff): such a re-publish would be"
                f" stored twice. Set the stream's duplicate_window to at least {needed:g}s,"
                " or dedupe with outbox.inbox on the consumer side",
                target=repr(self),
                stream=name,
                duplicate_window_seconds=window,
                needed_seconds=needed,
            )

    async def _disconnect(self) -> None:
        """Wait (a bounded time) for the acks in flight, then drain and close."""
        self._closing = True
        nc, self._nc, self._js = self._nc, None, None
        with self._lock:
            queued, self._queue = self._queue, []
        closed = PublishFailed("the NATS target closed before sending this")
        for *_, call, index in queued:
            call.settle(index, closed)
        if nc is None or nc.is_closed:
            return
        try:
            deadline = asyncio.get_running_loop().time() + self.timeout
            while self._acks and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.01)
            await asyncio.wait_for(nc.drain(), self.timeout)
        except Exception:
            await nc.close()

    async def _on_error(self, error: Exception) -> None:
        log.debug("nats connection error", target=repr(self), error=_describe(error))

    async def _on_disconnected(self) -> None:
        if self._closing:
            return
        log.warning("nats disconnected; reconnecting", target=repr(self))

    async def _on_reconnected(self) -> None:
        log.info("nats reconnected", target=repr(self))


def _servers(url: str) -> list[str]:
    """The server URLs of ``url`` (several may be given, comma-separated)."""
    if not isinstance(url, str) or not url.strip():
        raise ConfigurationError(
            f"NatsJetStream needs a server URL such as nats://127.0.0.1:4222, not {url!r}"
        )
    servers = [part.strip() for part in url.split(",")]
    for server in servers:
        try:
            parts = urlsplit(server)
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError as error:
            raise ConfigurationError(
                f"NatsJetStream URL {server!r} is not usable: {error}"
            ) from None
        if parts.scheme not in SCHEMES or not parts.hostname:
            raise ConfigurationError(
                f"NatsJetStream URL {server!r} is not usable: expected"
                f" {'|'.join(SCHEMES)}://host[:port], e.g. nats://127.0.0.1:4222"
            )
    return servers


def _template(subject: str) -> list[tuple[str, str | None]]:
    """The literal pieces and fields of a subject template, checked: the subject it makes
    must be one NATS accepts for publishing (no wildcards, no empty tokens)."""
    if not isinstance(subject, str) or not subject:
        raise ConfigurationError(
            f"NatsJetStream needs a subject such as 'orders' or 'orders.{{key}}', not {subject!r}"
        )
    try:
        parsed = list(string.Formatter().parse(subject))
    except ValueError as error:
        raise ConfigurationError(
            f"NatsJetStream subject {subject!r} is not a valid template: {error}"
        ) from None
    parts: list[tuple[str, str | None]] = []
    for literal, field, spec, conversion in parsed:
        if field is not None and (field not in FIELDS or spec or conversion):
            named = field + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "")
            raise ConfigurationError(
                f"NatsJetStream subject {subject!r} may name only {{key}} and {{event}},"
                f" not {{{named}}}"
            )
        parts.append((literal, field))
    sample = "".join(literal + ("x" if field else "") for literal, field in parts)
    tokens = sample.split(".")
    if not all(TOKEN.fullmatch(token) for token in tokens) or {"*", ">"} & set(tokens):
        raise ConfigurationError(
            f"NatsJetStream subject {subject!r} is not a subject messages can be published to:"
            " tokens separated by single dots, no whitespace, no wildcards * or >"
        )
    return parts


def _headers(message: Message) -> dict[str, str]:
    """The message's headers on the wire, with ``Nats-Msg-Id``; PublishRejected for a
    header NATS cannot carry, or one that would steer JetStream (``Nats-*``)."""
    headers = message.wire_headers()
    for name, value in headers.items():
        if not HEADER_NAME.fullmatch(name):
            raise PublishRejected(f"header name {name!r} cannot be sent over NATS")
        if name.lower().startswith("nats-"):
            raise PublishRejected(f"header {name!r} is reserved: Nats-* headers steer JetStream")
        if "\r" in value or "\n" in value:
            raise PublishRejected(f"header {name!r} has a line break, which NATS cannot carry")
    headers["Nats-Msg-Id"] = message.id
    headers["Content-Type"] = "application/json"
    return headers


def _describe(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


__all__ = ["NatsJetStream"]
