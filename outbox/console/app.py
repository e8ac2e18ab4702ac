"""The console as an ASGI application: routes, templates, the database, and clear failures."""

from __future__ import annotations

import contextlib
import functools
import re
import time
from collections.abc import Iterator
from datetime import timedelta
from importlib import resources
from typing import Any
from urllib.parse import quote

import sqlalchemy as sa
from markupsafe import Markup
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from outbox import distribution
from outbox.console import actions, audit_pages, failures, pages
from outbox.console.activity import Activity
from outbox.console.config import ConsoleConfig
from outbox.console.guard import ProxyUser, SignIn, actor, token
from outbox.moments import duration, moment


class Console:
    """What every page shares: the configuration, the database and the templates."""

    def __init__(self, engine: sa.Engine, config: ConsoleConfig) -> None:
        self.engine = engine
        self.config = config
        self.activity = Activity()
        folder = resources.files("outbox.console") / "templates"
        self.templates = Jinja2Templates(directory=str(folder))
        env = self.templates.env
        env.finalize = visible
        env.filters["moment"] = moment
        env.filters["ago"] = lambda seconds: duration(seconds) if seconds is not None else ""
        env.filters["key_url"] = functools.partial(key_url, config.base_path)
        env.globals["base"] = config.base_path
        env.globals["allow_actions"] = config.allow_actions
        env.globals["version"] = distribution.version()

    def render(
        self, request: Request, name: str, status_code: int = 200, **context: Any
    ) -> Response:
        who = actor(request)
        context.update(request=request, actor=who, csrf=token(self.config.secret, who))
        return self.templates.TemplateResponse(request, name, context, status_code=status_code)

    @contextlib.contextmanager
    def reading(self) -> Iterator[sa.Connection]:
        """A read-only transaction under the console's statement timeout, rolled back after."""
        with self._transaction("READ ONLY") as connection:
            yield connection

    @contextlib.contextmanager
    def acting(self) -> Iterator[sa.Connection]:
        """A transaction that may write (actions only): the caller commits it."""
        if not self.config.allow_actions:  # pragma: no cover - the routes refuse first
            raise HTTPException(403, "actions are off")
        with self._transaction("READ WRITE") as connection:
            yield connection

    def limit(self, connection: sa.Connection) -> None:
        """The console's statement timeout for the transaction ``connection`` is in (or is about
        to begin): every transaction of the console sets it, an action's batches included."""
        timeout = int(self.config.statement_timeout / timedelta(milliseconds=1))
        # SET LOCAL, not a connection option: it holds through PgBouncer's transaction pooling
        connection.exec_driver_sql(f"SET LOCAL statement_timeout = {timeout}")

    @contextlib.contextmanager
    def _transaction(self, mode: str) -> Iterator[sa.Connection]:
        with self.engine.connect() as connection:
            connection.exec_driver_sql(f"SET TRANSACTION {mode}")
            self.limit(connection)
            try:
                yield connection
            finally:
                connection.rollback()


def create_app(engine: sa.Engine, config: ConsoleConfig | None = None) -> ASGIApp:
    """The console on ``engine``'s database (``outbox ui`` serves it with uvicorn)."""
    console = Console(engine, config or ConsoleConfig())
    routes: list[BaseRoute] = [
        *pages.routes(console),
        *audit_pages.routes(console),
        *actions.routes(console),
        Mount("/static", StaticFiles(packages=[("outbox.console", "static")]), name="static"),
    ]
    base = console.config.base_path
    if base:
        home = Route("/", lambda _: RedirectResponse(f"{base}/"), include_in_schema=False)
        routes = [Mount(base, routes=routes), home]
    app = Starlette(
        routes=routes,
        exception_handlers=failures.handlers(console),
    )
    app.state.console = console
    served: ASGIApp = ServerTiming(app)
    if console.config.users:
        served = SignIn(served, console.config.users)
    elif console.config.user_header:
        served = ProxyUser(served, console.config.user_header)
    return served


def key_url(base: str, key: str) -> str:
    """The page of ``key``: ``/keys/<key>`` with every ``/`` of it encoded, or
    ``/keys?key=...`` for the keys ``.`` and ``..``, which browsers resolve as path segments
    however they are encoded."""
    if key in (".", ".."):
        return f"{base}/keys?key={quote(key, safe='')}"
    return f"{base}/keys/{quote(key, safe='')}"


# Control characters but newline, tab and carriage return: invisible in a page, and in a
# handler's error they hide what it says (an ANSI colour sequence, a bell).
_CONTROLS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def visible(value: Any) -> Any:
    """Every value a template prints: stored text with its control characters shown as
    escapes (``\\x1b``), as the commands show them; markup the console made is left alone."""
    if isinstance(value, str) and not isinstance(value, Markup):
        return _CONTROLS.sub(lambda m: f"\\x{ord(m[0]):02x}", value)
    return value


#: On every answer: no page of the console may be framed by another site (a framed page's
#: Retry or Cancel button, clicked by a signed-in operator, is a real request from the
#: console's own page, which no token can tell apart), and no link tells another site which
#: page it came from.
GUARD_HEADERS = [
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
]


class ServerTiming:
    """Adds ``Server-Timing: app;dur=<ms>`` to every response (how long the console took, as
    browsers' developer tools and ``bench/console.py`` read it), and :data:`GUARD_HEADERS`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        # pages and downloads may hold payloads and personal data: never cached; the
        # stylesheet and htmx may be
        cache = [] if "/static/" in scope["path"] else [(b"cache-control", b"no-store")]

        async def timed(message: Message) -> None:
            if message["type"] == "http.response.start":
                took = (time.perf_counter() - started) * 1000
                headers = [
                    *message.get("headers", []),
                    *GUARD_HEADERS,
                    *cache,
                    (b"server-timing", f"app;dur={took:.1f}".encode()),
                ]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, timed)
