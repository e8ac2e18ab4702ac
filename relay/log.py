"""Logs: JSON lines off a terminal, readable colour on one (structlog)."""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING

import structlog

if TYPE_CHECKING:
    from .execute import Outcome


def configure(fmt: str = "auto", level: str = "info") -> None:
    """``fmt`` is ``json``, ``console`` or ``auto`` (console on a terminal, else JSON)."""
    renderer: structlog.typing.Processor
    if fmt == "json" or (fmt == "auto" and not sys.stderr.isatty()):
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def first_line(exc: BaseException) -> str:
    """An exception's first line, for a log field (its type when it has no message, or when
    it cannot be printed)."""
    try:
        text = str(exc)
    except Exception:
        return type(exc).__name__
    return text.splitlines()[0] if text else type(exc).__name__


def log_outcome(log: structlog.typing.FilteringBoundLogger, outcome: Outcome) -> None:
    """One line about an attempt, bound to its job (uuid, type, key, queue, attempt)."""
    job = outcome.job
    fields = {
        "uuid": str(job.uuid),
        "type": job.type,
        "key": job.key,
        "queue": job.queue,
        "attempt": job.attempt,
        "duration_ms": round(outcome.duration_ms, 2),
    }
    error = outcome.error or {}
    if outcome.succeeded:
        log.debug("job succeeded", **fields)
    elif outcome.postponed:  # the handler raised outbox.RetryLater: not a failure
        log.info("job postponed; runs again later", delay_s=outcome.later, **fields)
    elif outcome.dead:
        log.error("job dead", error=error.get("message"), traceback=error.get("traceback"),
                  error_type=error.get("type"), **fields)  # fmt: skip
    else:
        # The traceback is in the job's history; the log says what and which job.
        log.warning("job failed; will retry", error=error.get("message", "")[:300],
                    error_type=error.get("type"), **fields)  # fmt: skip
