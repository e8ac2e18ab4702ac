"""The relay daemon: claims, runs and completes the jobs that applications enqueue.

It imports :mod:`outbox` for the models, the handler registry and shared SQL;
:mod:`outbox` never imports it.
"""

from __future__ import annotations

import sys


def _structlog_without_rich() -> None:
    """Import structlog without rich: structlog loads rich (with pygments and attrs) when it
    is installed, for pretty tracebacks that the relay never prints (its logs format
    exceptions as text, JSON off a terminal): about 55 ms of the relay's start and 3.7 MiB.
    rich is hidden only while structlog is imported, so the console commands and the
    application import it as usual; where rich or structlog is loaded already, nothing
    changes."""
    if "structlog" in sys.modules or "rich" in sys.modules:
        return
    sys.modules["rich"] = None  # type: ignore[assignment]  # import rich raises ImportError
    try:
        import structlog  # noqa: F401
    finally:
        if "rich" in sys.modules and sys.modules["rich"] is None:
            del sys.modules["rich"]


_structlog_without_rich()
