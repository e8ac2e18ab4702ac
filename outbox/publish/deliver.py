"""The relay's side of a destination: each publish job becomes a :class:`Message` for its
target, and the target's answer becomes the job's outcome and history."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import structlog
from prometheus_client import Counter, Histogram

from outbox.errors import InvalidPayload, PermanentFailure, RetryLater
from outbox.fastjson import dumps
from outbox.job import Job
from outbox.publish.target import (
    Delivery,
    Limits,
    Message,
    PublishFailed,
    PublishRejected,
    Target,
)

if TYPE_CHECKING:
    from outbox.registry import Registry
    from outbox.settings import Settings

log = structlog.get_logger("outbox.publish")

PUBLISHED = Counter(
    "outbox_publish_total",
    "Publish attempts by destination and outcome: delivered, duplicate (the broker had it "
    "already), failed (retried), rejected (dead).",
    ["destination", "outcome"],
)
PUBLISH_SECONDS = Histogram(
    "outbox_publish_seconds",
    "From handing a message to its target to the broker's or endpoint's answer.",
    ["destination"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


def message_of(destination: str, job: Job) -> Message:
    """The message a publish job carries; a payload that no publish wrote ends it dead."""
    payload = job.payload
    if "message" not in payload:
        raise InvalidPayload(
            f"job {job.uuid} of type {job.type!r} has no 'message': publish jobs are written "
            "by outbox.publish"
        )
    headers = payload.get("headers") or {}
    event = payload.get("event")
    if not isinstance(headers, dict) or not isinstance(event, str | None):
        raise InvalidPayload(f"job {job.uuid}: 'headers' or 'event' is not what publish writes")
    return Message(
        uuid=job.uuid, destination=destination, body=dumps(payload["message"]), key=job.key,
        event=event, headers=headers, attempt=job.attempt, enqueued_at=job.enqueued_at,
    )  # fmt: skip


class Destination:
    """A named target, as ``registry.destination`` declares it: its handler publishes one
    message per job; the relay starts it before claiming and closes it after the last
    handler returned."""

    def __init__(self, name: str, target: Target) -> None:
        self.name, self.target = name, target
        self._started = False
        self._lock = threading.Lock()
        self._labels: dict[str, Any] = {}

    def start(self, limits: Limits) -> None:
        """Start the target once; a target that cannot reach its broker now is logged and
        tried again by each publish (the relay's other work goes on)."""
        with self._lock:
            if self._started:
                return
            try:
                self.target.start(limits)
            except Exception as exc:  # any client's error: log it, go on
                log.error(
                    "destination could not start; its messages wait and are retried",
                    destination=self.name, error=f"{type(exc).__name__}: {exc}",
                )  # fmt: skip
            self._started = True

    def close(self) -> None:
        with self._lock:
            if not self._started:
                return
            self._started = False
            try:
                self.target.close()
            except Exception as exc:  # stopping: say so, never raise
                log.warning(
                    "destination did not close cleanly",
                    destination=self.name, error=f"{type(exc).__name__}: {exc}",
                )  # fmt: skip

    def deliver(self, job: Job) -> Delivery:
        """The handler of ``publish:<name>``: the job succeeds when the target confirmed it
        (its answer is kept in history), fails and is retried when the target failed, waits
        as the other side asked (``Retry-After``), or ends dead when it was refused."""
        message = message_of(self.name, job)
        started = time.perf_counter()
        try:
            delivery: Delivery | BaseException = self.target.publish(message)
        except Exception as exc:
            delivery = exc
        answer = self._answer(delivery, time.perf_counter() - started)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def deliver_many(self, jobs: Sequence[Job]) -> list[Delivery | BaseException]:
        """The batch form of :meth:`deliver`, for targets with ``publish_many``: one answer
        per job, at its position; an exception is what :meth:`deliver` would have raised."""
        answers: list[Delivery | BaseException | None] = [None] * len(jobs)
        messages: list[Message] = []
        positions: list[int] = []
        for n, job in enumerate(jobs):
            try:
                messages.append(message_of(self.name, job))
                positions.append(n)
            except InvalidPayload as exc:
                answers[n] = exc
        started = time.perf_counter()
        try:
            sent = self.target.publish_many(messages) if messages else []  # type: ignore[attr-defined]
            if len(sent) != len(messages):
                raise PublishFailed(f"the target answered {len(sent)} of {len(messages)} messages")
        except BaseException as exc:  # the whole call failed: each message with it
            sent = [exc] * len(messages)
        elapsed = time.perf_counter() - started
        for n, answer in zip(positions, sent, strict=True):
            answers[n] = self._answer(answer, elapsed)
        return [a for a in answers if a is not None]

    def _answer(self, answer: Delivery | BaseException, elapsed: float) -> Delivery | BaseException:
        """One target answer as :meth:`deliver` turns it into an outcome, counted."""
        if isinstance(answer, Delivery):
            self._count(answer.outcome)
            PUBLISH_SECONDS.labels(self.name).observe(elapsed)
            return answer
        if isinstance(answer, PublishRejected):
            self._count("rejected")
            status = f" (status {answer.status})" if answer.status is not None else ""
            refused = PermanentFailure(f"{self.name} refused the message{status}: {answer.detail}")
            refused.__cause__ = answer
            return refused
        self._count("failed")
        if isinstance(answer, PublishFailed) and answer.retry_after is not None:
            asked = min(max(answer.retry_after, 0.0), RetryLater.MAX_DELAY.total_seconds())
            later = RetryLater(asked, reason=answer.detail)
            later.__cause__ = answer
            return later
        return answer

    def _count(self, outcome: str) -> None:
        counter = self._labels.get(outcome)
        if counter is None:
            counter = self._labels[outcome] = PUBLISHED.labels(self.name, outcome)
        counter.inc()


def start(registry: Registry, settings: Settings) -> None:
    """Start every destination of ``registry`` before the relay's first claim, telling each
    how late a message may be published again: a lease, plus its handler's longest backoff
    (JetStream checks its duplicate window against it)."""
    from outbox.publish.api import job_type

    for destination in registry.destinations.values():
        handler = registry[job_type(destination.name)]
        attempts = handler.max_attempts or settings.default_max_attempts
        longest = max((handler.backoff(n) for n in range(1, attempts)), default=0.0)
        destination.start(Limits(settings.lease.total_seconds(), longest))


def close(registry: Registry) -> None:
    """Close every destination of ``registry`` (flushing what a target still holds)."""
    for destination in registry.destinations.values():
        destination.close()
