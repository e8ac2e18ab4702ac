"""What a relay hands a publishing target, and what the target answers.

A destination's jobs run in the relay's handler threads like any other job, so a target's
:meth:`Target.publish` is called from many threads at once, one message per call. A target
keeps one connection (or a pool) for all of them and pipelines what they send: publisher
confirms, JetStream acks and Kafka deliveries are awaited together, never one blocking round
trip per message while others wait behind it.

A target may also offer ``publish_many(messages) -> list[Delivery | Exception]``: the relay
then hands it the destination's messages of a claim together (at most the target's
``batch_size``, :data:`BATCH` where it has none), and the target sends them all before it
waits for their confirmations. Each message's answer is at its position: a
:class:`Delivery`, or the exception :meth:`Target.publish` would have raised.
Messages of one key are never in one call together (a claim takes the head of each key only),
so sending a call's messages at once keeps per-key order (G4).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import datetime
from typing import Literal, Protocol, runtime_checkable
from uuid import UUID

from outbox.errors import ConfigurationError, OutboxError

#: The most messages the relay hands ``publish_many`` at once, for a target without a
#: ``batch_size`` of its own.
BATCH = 100
#: The ``batch_size`` of the brokers' targets: a claim's messages of one destination in one
#: call (a claim takes at most 500), each call one hand-over to the client and one wait for
#: its confirms, reports or acks.
CLAIM_SIZED = 500
#: Header names outbox sets on every message beside the user's.
KEY_HEADER, EVENT_HEADER, ID_HEADER = "outbox-key", "outbox-event", "outbox-id"


@dataclasses.dataclass(frozen=True, slots=True)
class Message:
    """One message to publish: a publish job as its target sees it."""

    #: The job's uuid: the message id on the wire, identical on every attempt.
    uuid: UUID
    destination: str
    #: The JSON body, as the application gave it (numbers as written).
    body: bytes
    key: str | None
    event: str | None
    #: The application's headers; :meth:`wire_headers` adds outbox's own.
    headers: Mapping[str, str]
    attempt: int
    enqueued_at: datetime

    @property
    def id(self) -> str:
        return str(self.uuid)

    def wire_headers(self) -> dict[str, str]:
        """The user's headers with ``outbox-key`` and ``outbox-event`` where given."""
        headers = dict(self.headers)
        if self.key is not None:
            headers[KEY_HEADER] = self.key
        if self.event is not None:
            headers[EVENT_HEADER] = self.event
        return headers


@dataclasses.dataclass(frozen=True, slots=True)
class Delivery:
    """A confirmed delivery; ``detail`` (the broker's answer: a stream sequence, a partition
    and offset, an HTTP status) is kept in the job's history."""

    outcome: Literal["delivered", "duplicate"]
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.outcome}: {self.detail}" if self.detail else self.outcome


class PublishFailed(OutboxError):
    """The broker or endpoint did not take the message; the job is retried with backoff, or
    after ``retry_after`` seconds when the other side said when (HTTP ``Retry-After``)."""

    def __init__(
        self, detail: str, *, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(detail)
        self.detail, self.status, self.retry_after = detail, status, retry_after


class PublishRejected(OutboxError):
    """The broker or endpoint refused the message for good (unroutable, HTTP 410): the job
    ends dead with this reason, and is never sent again unless an operator retries it."""

    def __init__(self, detail: str, *, status: int | None = None) -> None:
        super().__init__(detail)
        self.detail, self.status = detail, status


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    """What the relay promises a target about re-deliveries, for targets that must check
    their broker's de-duplication window against it (JetStream): a message may be published
    again up to ``lease`` plus ``longest_backoff`` after a first publish whose completion was
    lost."""

    lease_seconds: float
    longest_backoff_seconds: float


@runtime_checkable
class Target(Protocol):
    """A broker or endpoint that messages are published to."""

    #: The optional dependency whose client the target uses, e.g. ``rabbitmq``.
    extra: str

    def start(self, limits: Limits) -> None:
        """Connect (or check that the client can), before the relay claims; may warn."""

    def publish(self, message: Message) -> Delivery:
        """Publish one message and wait for its confirmation; thread-safe. Raises
        :class:`PublishFailed` or :class:`PublishRejected`; any other exception is a failure
        retried with backoff."""
        ...

    def close(self) -> None:
        """Flush what is in flight and disconnect; called once when the relay stops."""


def missing_extra(extra: str, module: str) -> ConfigurationError:
    """The one line a target gives when its client is not installed."""
    return ConfigurationError(
        f"this target needs the {module!r} client: pip install 'outbox-relay[{extra}]'"
    )


__all__ = [
    "BATCH",
    "CLAIM_SIZED",
    "EVENT_HEADER",
    "ID_HEADER",
    "KEY_HEADER",
    "Delivery",
    "Limits",
    "Message",
    "PublishFailed",
    "PublishRejected",
    "Target",
    "missing_extra",
]
