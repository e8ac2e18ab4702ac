"""What the console shows when a page cannot be made: a page saying why, never a traceback.

Each failure a user can meet maps to a status, a title and a message; :func:`handlers` gives
Starlette one handler per exception class, all of one shape.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from outbox.errors import OutboxError
from outbox.moments import duration

if TYPE_CHECKING:
    from outbox.console.app import Console

#: What a failure shows: its status, its page's title and the message.
Shown = tuple[int, str, str]

_TITLES = {400: "Bad request", 403: "Forbidden", 404: "Not found", 405: "Method not allowed"}


def handlers(console: Console) -> dict[Any, Callable[..., Any]]:
    """Starlette's exception handlers: the most specific class of an exception is used."""
    described: dict[type[Exception], Callable[[Console, Any], Shown]] = {
        HTTPException: _http,
        sa.exc.OperationalError: _unreachable,
        sa.exc.ProgrammingError: _schema,
        sa.exc.DataError: _refused_value,
        sa.exc.DBAPIError: _unreachable,
        sa.exc.TimeoutError: _busy,
        OutboxError: _bad_input,
    }
    return {kind: _page(console, describe) for kind, describe in described.items()}


def _page(console: Console, describe: Callable[[Console, Any], Shown]) -> Callable[..., Any]:
    async def handle(request: Request, exc: Exception) -> Response:
        status, title, message = describe(console, exc)
        page = console.render(request, "error.html", status, title=title, message=message)
        if isinstance(exc, HTTPException):
            page.headers.update(exc.headers or {})  # Allow, with a 405
        return page

    return handle


def _reason(exc: sa.exc.DBAPIError) -> str:
    return str(exc.orig or exc).strip().splitlines()[0]


def _http(console: Console, exc: HTTPException) -> Shown:
    return exc.status_code, _TITLES.get(exc.status_code, "Error"), exc.detail


def _unreachable(console: Console, exc: sa.exc.DBAPIError) -> Shown:
    reason = _reason(exc)
    if not isinstance(exc, sa.exc.OperationalError):
        message = f"The database refused this page's query: {reason}"
    elif "statement timeout" in reason:
        took = duration(console.config.statement_timeout.total_seconds())
        message = (
            f"This page's query ran longer than the console's statement timeout ({took}) "
            "and was stopped, so that it cannot slow the relays. Narrow the filter, or "
            "raise OUTBOX_UI_STATEMENT_TIMEOUT."
        )
    else:
        message = f"The console cannot reach the database: {reason}"
    return 503, "Database unavailable", message


def _busy(console: Console, exc: sa.exc.TimeoutError) -> Shown:
    return 503, "Console busy", (
        "Every database connection of the console was busy for too long: other pages are "
        "still being made. Try again in a moment."
    )  # fmt: skip


def _schema(console: Console, exc: sa.exc.ProgrammingError) -> Shown:
    reason = _reason(exc)
    if "permission denied" in reason:
        return 503, "Not allowed", f"The console's database role may not do this: {reason}"
    return 503, "Schema missing", (
        f"The database does not hold the outbox schema this console needs ({reason}): "
        "run `outbox migrate`."
    )  # fmt: skip


def _refused_value(console: Console, exc: sa.exc.DataError) -> Shown:
    return 400, "Bad request", f"The database refused a value of this request: {_reason(exc)}"


def _bad_input(console: Console, exc: OutboxError) -> Shown:
    return 400, "Bad request", str(exc)
