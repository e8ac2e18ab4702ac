"""``outbox ui``: a web console for operators and auditors (the ``outbox-relay[ui]`` extra).

Server-rendered pages (Starlette and Jinja2, htmx for partial updates, no JavaScript build)
over the live jobs, their history and the seal chain; read-only unless started with actions
allowed. :func:`create_app` builds it on an engine, for tests or to mount in another ASGI app.
"""

from __future__ import annotations

from outbox.console.app import create_app
from outbox.console.config import ConsoleConfig

__all__ = ["ConsoleConfig", "create_app"]
