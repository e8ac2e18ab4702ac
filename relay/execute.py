"""Running one handler on one job, and what came of it."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import traceback
from typing import Any

from sqlalchemy.orm import Session

from outbox.errors import PermanentFailure
from outbox.job import Job
from outbox.registry import Handler

TRACEBACK_LIMIT = 8_000  # characters kept of a traceback (G6 keeps every error, bounded)


@dataclasses.dataclass(slots=True)
class Outcome:
    """What one attempt came to: success, or an error and whether it may be retried."""

    job: Job
    duration_ms: float
    error: dict[str, Any] | None = None
    #: The job can never succeed (unknown type, invalid payload): dead without retrying.
    permanent: bool = False

    @property
    def succeeded(self) -> bool:
        return self.error is None

    @property
    def dead(self) -> bool:
        """Failed for good: it can never succeed, or this was its last attempt (G6)."""
        return not self.succeeded and (self.permanent or self.job.attempt >= self.job.max_attempts)

    @property
    def label(self) -> str:
        """succeeded, retried (failed, will run again) or dead, as the metrics count it."""
        return "succeeded" if self.succeeded else "dead" if self.dead else "retried"


def describe(exc: BaseException) -> dict[str, Any]:
    """An exception as history keeps it: type, message and a bounded traceback."""
    text = "".join(traceback.format_exception(exc))
    if len(text) > TRACEBACK_LIMIT:
        text = "...\n" + text[-TRACEBACK_LIMIT:]
    return {
        "type": f"{type(exc).__module__}.{type(exc).__qualname__}",
        "message": str(exc)[:2000],
        "traceback": text,
    }


def unknown_type(job: Job) -> Outcome:
    error = {
        "type": "outbox.UnknownJobType",
        "message": f"no handler is registered for job type {job.type!r} on this relay",
        "traceback": None,
    }
    return Outcome(job, 0.0, error, permanent=True)


def run(handler: Handler, job: Job, session: Session | None = None) -> Outcome:
    """Call the handler; any exception becomes a failed outcome, never escapes."""
    started = time.perf_counter()
    try:
        args: tuple[Any, ...] = (job, session) if handler.takes_session else (job,)
        result = handler.func(*args)
        if handler.is_async or asyncio.iscoroutine(result):
            asyncio.run(result)
    except PermanentFailure as exc:
        return Outcome(job, _ms(started), describe(exc), permanent=True)
    except Exception as exc:
        return Outcome(job, _ms(started), describe(exc))
    except SystemExit as exc:  # sys.exit() in a handler fails its job, not the relay
        return Outcome(job, _ms(started), describe(exc))
    return Outcome(job, _ms(started))


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000
