"""Handlers by job type, with the options the relay runs them under."""

from __future__ import annotations

import builtins
import dataclasses
import inspect
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import tenacity
from tenacity.wait import wait_base

from outbox import validate
from outbox.errors import DuplicateHandler, InvalidJob, RegistryError
from outbox.job import Job
from outbox.schedule import CatchUp, Schedule

if TYPE_CHECKING:  # imported where used: outbox.publish imports this module
    from outbox.publish.deliver import Destination
    from outbox.publish.target import Target

HandlerFunc = Callable[..., Any]
#: A registry's ``redact_error`` hook: given the job, the exception its handler raised and the
#: error as it would be kept (``type``, ``message``, ``traceback``), it returns the ``message``
#: (a str) and ``traceback`` (a str or None) to log and store instead.
ErrorRedactor = Callable[[Job, BaseException, Mapping[str, Any]], Mapping[str, Any]]

#: Exponential backoff from 1 s, doubling to at most an hour, with up to 5 s of jitter
#: so that jobs which failed together do not retry together.
DEFAULT_RETRY: wait_base = tenacity.wait_exponential_jitter(multiplier=1, max=3600, jitter=5)


@dataclasses.dataclass(frozen=True, slots=True)
class Handler:
    """A registered handler and its options; ``None`` means the relay's default."""

    type: str
    func: HandlerFunc
    queue: str | None
    max_attempts: int | None
    timeout: float | None
    retry: wait_base
    #: True when the function takes a second parameter: the session of the
    #: transaction that completes its job (G3).
    takes_session: bool
    is_async: bool
    #: The registry's hook that keeps payload values out of logged and stored errors.
    redact_error: ErrorRedactor | None = None
    #: Runs many jobs of this type in one call, one answer each (a destination whose target
    #: publishes in batches): the relay hands it the type's jobs of a claim together.
    batch: Callable[[Sequence[Job]], list[Any]] | None = None
    #: The most jobs :attr:`batch` takes in one call (the target's ``batch_size``).
    batch_size: int = 100

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before the next attempt, after ``attempt`` failed."""
        state = tenacity.RetryCallState(tenacity.Retrying(), None, (), {})
        state.attempt_number = attempt
        return max(0.0, float(self.retry(state)))


class Registry:
    """The job types an application handles.

    A strict registry also refuses, at enqueue, any type it has no handler for
    (pass it as ``registry=`` to :func:`outbox.enqueue`). ``redact_error`` decides what
    of a failing handler's error is logged and stored: see :func:`redact_messages`.
    """

    def __init__(self, *, strict: bool = False, redact_error: ErrorRedactor | None = None) -> None:
        if redact_error is not None and not callable(redact_error):
            raise RegistryError(
                f"redact_error must be callable as (job, exception, error), not {redact_error!r}"
            )
        if not isinstance(strict, bool):
            raise RegistryError(f"strict must be True or False, not {strict!r}")
        self.strict = strict
        self._redact_error = redact_error
        self._handlers: dict[str, Handler] = {}
        self._schedules: dict[str, Schedule] = {}
        self._destinations: dict[str, Destination] = {}

    @property
    def redact_error(self) -> ErrorRedactor | None:
        """The hook given at construction; every handler of the registry runs under it."""
        return self._redact_error

    def handler(
        self,
        type: str,
        *,
        queue: str | None = None,
        max_attempts: int | None = None,
        timeout: float | None = None,
        retry: wait_base | None = None,
    ) -> Callable[[HandlerFunc], HandlerFunc]:
        """Register the decorated function as the handler of ``type``."""
        if callable(type) and not isinstance(type, str):
            raise RegistryError(
                f'use @registry.handler("job.type"), with the job type in parentheses: '
                f"@registry.handler alone was given {getattr(type, '__qualname__', type)!r} "
                "and would register nothing"
            )

        def register(func: HandlerFunc) -> HandlerFunc:
            self.register(
                type, func, queue=queue, max_attempts=max_attempts, timeout=timeout, retry=retry
            )
            return func

        return register

    def register(
        self,
        type: str,
        func: HandlerFunc,
        *,
        queue: str | None = None,
        max_attempts: int | None = None,
        timeout: float | None = None,
        retry: wait_base | None = None,
    ) -> Handler:
        try:
            validate.job_type(type)
            if queue is not None:
                validate.queue(queue)
            validate.max_attempts(max_attempts)
        except InvalidJob as exc:
            raise RegistryError(f"handler for {type!r}: {exc}") from None
        if type in self._handlers:
            existing = self._handlers[type].func
            raise DuplicateHandler(
                f"job type {type!r} already has a handler ({existing.__module__}."
                f"{existing.__qualname__}); each type has exactly one"
            )
        if timeout is not None and not validate.positive_seconds(timeout):
            raise RegistryError(f"handler for {type!r}: timeout must be positive seconds")
        if retry is not None and not isinstance(retry, wait_base):
            raise RegistryError(
                f"handler for {type!r}: retry must be a tenacity wait strategy, "
                "e.g. tenacity.wait_exponential_jitter(multiplier=1, max=600)"
            )
        handler = Handler(
            type=type,
            func=func,
            queue=queue,
            max_attempts=max_attempts,
            timeout=None if timeout is None else float(timeout),
            retry=retry or DEFAULT_RETRY,
            takes_session=_takes_session(type, func),
            is_async=inspect.iscoroutinefunction(func),
            redact_error=self._redact_error,
        )
        self._handlers[type] = handler
        return handler

    def schedule(
        self,
        name: str,
        type: str,
        *,
        cron: str | None = None,
        every: timedelta | None = None,
        payload: Mapping[str, Any] | None = None,
        queue: str | None = None,
        key: str | None = None,
        timezone: str = "UTC",
        catch_up: CatchUp = "latest",
    ) -> Schedule:
        """Enqueue a job of ``type`` at each tick of ``cron`` (in ``timezone``) or ``every``.

        The relays that load this registry enqueue each tick exactly once between them; the
        handler of ``type`` may live in this registry or in another relay's. The first tick
        is the next one after the relay first sees the schedule. Ticks missed while no relay
        ran are caught up by ``catch_up``: ``"latest"`` one job for the latest of them,
        ``"none"`` none, ``"all"`` one job each (at most 100). See docs/howto/periodic-jobs.md.
        """
        declared = Schedule(
            name, type, cron=cron, every=every, payload=payload, queue=queue, key=key,
            timezone=timezone, catch_up=catch_up,
        )  # fmt: skip
        if name in self._schedules:
            raise RegistryError(
                f"schedule {name!r} is already declared; each name is declared once"
            )
        self._schedules[name] = declared
        return declared

    @property
    def schedules(self) -> list[Schedule]:
        """The declared schedules, in the order of declaration."""
        return list(self._schedules.values())

    def destination(
        self,
        name: str,
        target: Target,
        *,
        queue: str | None = None,
        max_attempts: int | None = None,
        timeout: float | None = None,
        retry: wait_base | None = None,
    ) -> Handler:
        """Publish the messages of ``outbox.publish(session, name, ...)`` to ``target``
        (``outbox.publish.RabbitMQ``, ``NatsJetStream``, ``Kafka`` or ``Webhook``).

        Registers the handler of job type ``publish:<name>``; the options are a handler's.
        The relay starts the target before it claims and closes it when it stops. See
        docs/howto/publish.md.
        """
        from outbox.publish.api import job_type
        from outbox.publish.deliver import Destination
        from outbox.publish.target import Target as TargetProtocol

        try:
            type = job_type(name)
        except InvalidJob as exc:
            raise RegistryError(f"destination {name!r}: {exc}") from None
        if isinstance(target, builtins.type):
            raise RegistryError(
                f"destination {name!r}: {target.__qualname__} is a class; give a target built "
                f"from it, e.g. {target.__qualname__}(url, ...)"
            )
        if not isinstance(target, TargetProtocol):
            raise RegistryError(
                f"destination {name!r}: {target!r} is not a publishing target; use one of "
                "outbox.publish.RabbitMQ, NatsJetStream, Kafka or Webhook"
            )
        if name in self._destinations:
            raise DuplicateHandler(f"destination {name!r} is already declared")
        batched = callable(getattr(target, "publish_many", None))
        size = _batch_size(name, target) if batched else None
        declared = Destination(name, target)
        handler = self.register(
            type, declared.deliver, queue=queue, max_attempts=max_attempts, timeout=timeout,
            retry=retry,
        )  # fmt: skip
        if size is not None:
            handler = self._handlers[type] = dataclasses.replace(
                handler, batch=declared.deliver_many, batch_size=size
            )
        self._destinations[name] = declared
        return handler

    @property
    def destinations(self) -> dict[str, Destination]:
        """The declared destinations by name."""
        return dict(self._destinations)

    def get(self, type: str) -> Handler | None:
        return self._handlers.get(type)

    def __getitem__(self, type: str) -> Handler:
        return self._handlers[type]

    def __contains__(self, type: object) -> bool:
        return type in self._handlers

    def __iter__(self) -> Iterator[Handler]:
        return iter(self._handlers.values())

    def __len__(self) -> int:
        return len(self._handlers)

    def queues(self, default: str) -> list[str]:
        """Every queue a handler names, with ``default`` standing in for those that name none."""
        return sorted({h.queue or default for h in self._handlers.values()})


def _takes_session(type: str, func: HandlerFunc) -> bool:
    if not callable(func):
        raise RegistryError(f"handler for {type!r} must be callable, not {func!r}")
    try:
        params = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):
        raise RegistryError(f"handler for {type!r}: cannot read its signature") from None
    positional = [
        p
        for p in params
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    keyword_only = [p for p in params if p.kind is p.KEYWORD_ONLY and p.default is p.empty]
    if (
        len(positional) not in (1, 2)
        or keyword_only
        or any(p.kind is p.VAR_POSITIONAL for p in params)
    ):
        raise RegistryError(
            f"handler for {type!r} must take (job) or (job, session), "
            f"not ({', '.join(p.name for p in params)})"
        )
    return len(positional) == 2


def redact_messages(job: Job, exc: BaseException, error: Mapping[str, Any]) -> dict[str, str]:
    """A ``redact_error`` hook that keeps no exception message: only the types, and where
    each exception was raised (:func:`error_frames`).

    Messages are where payload values leak: ``int(job.payload["card"])`` fails with
    ``invalid literal for int() with base 10: '4111-...'``. The message kept names the types
    of the exception and of its causes, say ``OperationalError (from DeadlockDetected):
    message redacted``.
    """
    kinds = [type(e).__qualname__ for _, e in _chain(exc)][::-1]
    causes = f" (from {', '.join(kinds[1:])})" if len(kinds) > 1 else ""
    return {"message": f"{kinds[0]}{causes}: message redacted", "traceback": error_frames(exc)}


_CAUSE = "\nThe above exception was the direct cause of the following exception:\n\n"
_CONTEXT = "\nDuring handling of the above exception, another exception occurred:\n\n"
_CHAIN_MAX = 32  # exceptions of a chain shown, the most recent ones
_GROUP_MAX = 15  # sub-exceptions shown of an exception group, as traceback shows them
_DEPTH_MAX = 5  # nested exception groups shown


def error_frames(exc: BaseException) -> str:
    """The traceback of ``exc`` and of its causes with every message left out: for each
    exception its frames (file, line, function and source line, never local values) and its
    type. Exception groups show their sub-exceptions the same way, indented."""
    return _frames(exc, 0)


def _frames(exc: BaseException, depth: int) -> str:
    parts: list[str] = []
    for link, item in _chain(exc):
        parts.append(link)
        if item.__traceback__ is not None:
            parts.append("Traceback (most recent call last):\n")
            parts.extend(traceback.format_tb(item.__traceback__))
        kind = type(item)
        name = (
            kind.__qualname__
            if kind.__module__ == "builtins"
            else f"{kind.__module__}.{kind.__qualname__}"
        )
        parts.append(f"{name} (message redacted)\n")
        if isinstance(item, BaseExceptionGroup) and depth < _DEPTH_MAX:
            for number, sub in enumerate(item.exceptions[:_GROUP_MAX], 1):
                inner = _frames(sub, depth + 1)
                parts.append(f"  +---- {number} ----\n")
                parts.extend(f"  | {line}\n" for line in inner.splitlines())
            if len(item.exceptions) > _GROUP_MAX:
                parts.append(f"  +---- and {len(item.exceptions) - _GROUP_MAX} more ----\n")
    return "".join(parts)


def _chain(exc: BaseException) -> list[tuple[str, BaseException]]:
    """``exc`` and the exceptions it was raised from or while handling, oldest first, each
    with the line Python prints before it."""
    newest_first: list[tuple[str, BaseException]] = []
    seen: set[int] = set()
    item: BaseException | None = exc
    while item is not None and id(item) not in seen and len(newest_first) < _CHAIN_MAX:
        seen.add(id(item))
        if item.__cause__ is not None:
            older, link = item.__cause__, _CAUSE
        elif item.__context__ is not None and not item.__suppress_context__:
            older, link = item.__context__, _CONTEXT
        else:
            older, link = None, ""
        newest_first.append((link, item))
        item = older
    oldest, *rest = newest_first[::-1]
    return [("", oldest[1]), *rest]


def _batch_size(name: str, target: object) -> int:
    """The most messages ``target`` takes in one ``publish_many`` call."""
    from outbox.publish.target import BATCH

    size = getattr(target, "batch_size", BATCH)
    if builtins.type(size) is not int or size < 1:
        raise RegistryError(
            f"destination {name!r}: {target!r} has batch_size {size!r}; it must be an int "
            "of at least 1 (the most messages one publish_many call takes)"
        )
    return size


__all__ = [
    "DEFAULT_RETRY",
    "ErrorRedactor",
    "Handler",
    "HandlerFunc",
    "Registry",
    "error_frames",
    "redact_messages",
]
