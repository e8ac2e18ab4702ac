"""Publishing from the application: a message for a destination is a job in the caller's
transaction (G1), of type ``publish:<destination>``, run by the relay whose registry names
the destination (``registry.destination``)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Coroutine, Iterable, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, overload

from outbox import validate
from outbox.bulk import message_refused
from outbox.enqueue import Enqueued, NewJob, enqueue_many, listed
from outbox.errors import InvalidJob
from outbox.settings import Settings

if TYPE_CHECKING:
    from outbox.enqueue import AsyncTarget, SyncTarget

#: Jobs of destination ``orders`` have the type ``publish:orders``.
TYPE_PREFIX = validate.PUBLISH_PREFIX
#: Header names are HTTP tokens (RFC 9110), the strictest of the wire formats; outbox's own
#: begin with ``outbox-`` and the webhook signature's with ``webhook-``.
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_RESERVED = ("outbox-", "webhook-")
HEADER_VALUE_MAX = 4096
HEADERS_MAX = 64
EVENT_MAX = 255


@dataclasses.dataclass(frozen=True, slots=True)
class Publish:
    """One message for :func:`publish_many`; the fields mean what :func:`publish`'s do."""

    destination: str
    message: Any
    key: str | None = None
    event: str | None = None
    headers: Mapping[str, str] | None = None
    idempotency_key: str | None = None
    queue: str | None = None
    delay: timedelta | float | None = None
    run_at: datetime | None = None

    def job(self) -> NewJob:
        """The job that carries this message; raises InvalidJob for a bad field."""
        payload: dict[str, Any] = {"message": self.message}
        if self.event is not None:
            payload["event"] = event(self.event)
        if self.headers:
            payload["headers"] = headers(self.headers)
        elif self.headers is not None and not isinstance(self.headers, Mapping):
            headers(self.headers)  # refuses it, with the reason
        return NewJob(
            job_type(self.destination), payload, key=self.key,
            idempotency_key=self.idempotency_key, queue=self.queue, delay=self.delay,
            run_at=self.run_at,
        )  # fmt: skip


def job_type(destination: object) -> str:
    """``publish:<destination>``, the destination checked as a job type is."""
    if not isinstance(destination, str):
        raise InvalidJob(f"destination must be a str, not {type(destination).__name__}")
    if not destination:
        raise InvalidJob("destination must not be empty")
    try:
        return validate.job_type(TYPE_PREFIX + destination)
    except InvalidJob:
        raise InvalidJob(
            f"destination {destination!r} may hold only letters, digits and _ . : / -, start "
            f"with a letter or digit, and be at most {validate.TYPE_MAX - len(TYPE_PREFIX)} "
            "characters"
        ) from None


def destination_of(job_type: str) -> str | None:
    """The destination a job type publishes to, or None for other jobs."""
    return job_type[len(TYPE_PREFIX) :] if job_type.startswith(TYPE_PREFIX) else None


def event(value: object) -> str:
    if not isinstance(value, str):
        raise InvalidJob(f"event must be a str or None, not {type(value).__name__}")
    if not value.strip() or len(value) > EVENT_MAX or not value.isprintable():
        raise InvalidJob(
            f"event {value[:40]!r} must be 1 to {EVENT_MAX} printable characters, "
            "such as 'order.paid'"
        )
    return value


def headers(value: object) -> dict[str, str]:
    """The user's headers: names that are HTTP tokens (not outbox's or the signature's own),
    values of printable text, each carried as given to every wire format."""
    if not isinstance(value, Mapping):
        raise InvalidJob(f"headers must be a mapping of str to str, not {type(value).__name__}")
    if len(value) > HEADERS_MAX:
        raise InvalidJob(f"{len(value)} headers; at most {HEADERS_MAX}")
    checked: dict[str, str] = {}
    for name, text in value.items():
        if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
            raise InvalidJob(
                f"header name {name!r} must be a token: letters, digits and !#$%&'*+.^_`|~-"
            )
        if name.lower().startswith(_RESERVED):
            raise InvalidJob(
                f"header {name!r}: names beginning with outbox- or webhook- are set by outbox"
            )
        if name.lower() in {n.lower() for n in checked}:
            raise InvalidJob(f"header {name!r} is given twice (names are case-insensitive)")
        if not isinstance(text, str):
            raise InvalidJob(f"header {name!r} must be a str, not {type(text).__name__}")
        if len(text) > HEADER_VALUE_MAX or not (text.isprintable() or text == ""):
            raise InvalidJob(
                f"header {name!r} must be printable text of at most {HEADER_VALUE_MAX} "
                "characters (no line breaks or control characters)"
            )
        checked[name] = text
    return checked


@overload
def publish(
    session: SyncTarget, destination: str, message: Any, *, key: str | None = ...,
    event: str | None = ..., headers: Mapping[str, str] | None = ...,
    idempotency_key: str | None = ..., queue: str | None = ...,
    delay: timedelta | float | None = ..., run_at: datetime | None = ...,
    settings: Settings | None = ...,
) -> Enqueued: ...  # fmt: skip
@overload
def publish(
    session: AsyncTarget, destination: str, message: Any, *, key: str | None = ...,
    event: str | None = ..., headers: Mapping[str, str] | None = ...,
    idempotency_key: str | None = ..., queue: str | None = ...,
    delay: timedelta | float | None = ..., run_at: datetime | None = ...,
    settings: Settings | None = ...,
) -> Coroutine[Any, Any, Enqueued]: ...  # fmt: skip
def publish(
    session: SyncTarget | AsyncTarget,
    destination: str,
    message: Any,
    *,
    key: str | None = None,
    event: str | None = None,
    headers: Mapping[str, str] | None = None,
    idempotency_key: str | None = None,
    queue: str | None = None,
    delay: timedelta | float | None = None,
    run_at: datetime | None = None,
    settings: Settings | None = None,
) -> Enqueued | Coroutine[Any, Any, Enqueued]:
    """Publish ``message`` (any JSON value) to ``destination`` when, and only if, the
    transaction of ``session`` commits: it is a job like any other (G1 to G8). ``key`` orders
    the destination's messages (G4) and is the Kafka message key; ``event`` and ``headers``
    travel as headers; the job's uuid is the message id on the wire on every attempt.

    ``session`` is a SQLAlchemy ``Session``, ``AsyncSession`` (then await the result) or
    ``Connection``. Raises :class:`outbox.InvalidJob` before anything is written.
    """
    one = Publish(destination, message, key, event, headers, idempotency_key, queue, delay, run_at)
    handles = enqueue_many(session, [one.job()], settings=settings)
    if isinstance(handles, list):
        return handles[0]
    return _first(handles)


async def _first(handles: Coroutine[Any, Any, list[Enqueued]]) -> Enqueued:
    return (await handles)[0]


@overload
def publish_many(
    session: SyncTarget, messages: Iterable[Publish], *, settings: Settings | None = ...
) -> list[Enqueued]: ...
@overload
def publish_many(
    session: AsyncTarget, messages: Iterable[Publish], *, settings: Settings | None = ...
) -> Coroutine[Any, Any, list[Enqueued]]: ...
def publish_many(
    session: SyncTarget | AsyncTarget,
    messages: Iterable[Publish],
    *,
    settings: Settings | None = None,
) -> list[Enqueued] | Coroutine[Any, Any, list[Enqueued]]:
    """Publish many messages in the transaction of ``session`` (with COPY when many);
    handles come back in the order given. One bad message refuses them all."""
    given = listed(
        messages, Publish, "publish_many takes an iterable of outbox.publish.Publish",
        "for one message use publish()",
    )  # fmt: skip
    jobs = []
    for n, item in enumerate(given):
        if not isinstance(item, Publish):
            raise InvalidJob(
                f"message {n} of {len(given)}: publish_many takes outbox.publish.Publish "
                f"items, not {type(item).__name__}"
            )
        try:
            jobs.append(item.job())
        except InvalidJob as exc:
            raise message_refused(exc, n, len(given), item.destination) from None
    return enqueue_many(session, jobs, settings=settings)
