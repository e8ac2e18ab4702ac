"""Handlers by job type, with the options the relay runs them under."""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Iterator
from typing import Any

import tenacity
from tenacity.wait import wait_base

from outbox import validate
from outbox.errors import DuplicateHandler, InvalidJob, RegistryError

HandlerFunc = Callable[..., Any]

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

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before the next attempt, after ``attempt`` failed."""
        state = tenacity.RetryCallState(tenacity.Retrying(), None, (), {})
        state.attempt_number = attempt
        return max(0.0, float(self.retry(state)))


class Registry:
    """The job types an application handles.

    A strict registry also refuses, at enqueue, any type it has no handler for
    (pass it as ``registry=`` to :func:`outbox.enqueue`).
    """

    def __init__(self, *, strict: bool = False) -> None:
        self.strict = strict
        self._handlers: dict[str, Handler] = {}

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
        if timeout is not None and (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not math.isfinite(timeout)
            or timeout <= 0
        ):
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
        )
        self._handlers[type] = handler
        return handler

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


__all__ = ["DEFAULT_RETRY", "Handler", "HandlerFunc", "Registry"]
