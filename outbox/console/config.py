"""How a console is set up: what it may do, where it answers, who may use it."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import secrets
from collections.abc import Mapping
from datetime import timedelta

from outbox.errors import ConfigurationError

DEFAULT_ADDR = "127.0.0.1:9465"
_PATH = re.compile(r"^(/[A-Za-z0-9._~-]+)+$")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ConsoleConfig:
    """Everything a console is built with (``outbox ui`` reads it from options and
    ``OUTBOX_UI_*`` variables)."""

    #: Retry and cancel buttons, recorded in history with the signed-in user as actor. Off,
    #: the console changes nothing: every POST is refused (403) and its database sessions are
    #: read-only.
    allow_actions: bool = False
    #: Where a reverse proxy serves the console, for example ``/outbox``: every page and link
    #: lives under it. The proxy passes the path on as it is (it does not strip the prefix).
    base_path: str = ""
    #: Basic-auth users and their passwords; none: no sign-in (loopback only, see ``outbox ui``).
    users: Mapping[str, str] = dataclasses.field(default_factory=dict)
    #: The header in which a reverse proxy that signs users in names them (for example
    #: ``X-Forwarded-User``): the actor of actions. Instead of ``users``.
    user_header: str | None = None
    #: The longest any one query of the console may run; a slow page must not slow the relays.
    statement_timeout: timedelta = timedelta(seconds=5)
    #: How often the overview refreshes itself.
    refresh: timedelta = timedelta(seconds=5)
    #: Signs the forms' anti-forgery tokens; a new one each start unless given (several
    #: console processes behind one balancer share one).
    secret: bytes = dataclasses.field(default_factory=lambda: secrets.token_bytes(32))

    def __post_init__(self) -> None:
        if self.base_path and not _PATH.match(self.base_path):
            raise ConfigurationError(
                f"base path {self.base_path!r} must look like /outbox: a leading slash, "
                "no trailing one, letters, digits, '.', '_', '~' or '-'"
            )
        if self.statement_timeout < timedelta(milliseconds=100):
            raise ConfigurationError("the statement timeout must be at least 100ms")
        if self.refresh < timedelta(seconds=1):
            raise ConfigurationError("the overview refreshes at most once a second")
        for user, password in self.users.items():
            if not user or ":" in user:
                raise ConfigurationError(f"user name {user!r} must be non-empty, without ':'")
            if not password:
                raise ConfigurationError(f"user {user!r} has an empty password")
        if self.user_header is not None:
            if self.users:
                raise ConfigurationError("sign users in by basic auth or by a proxy's header")
            if not re.fullmatch(r"[A-Za-z0-9-]{1,100}", self.user_header):
                raise ConfigurationError(
                    f"user header {self.user_header!r} must be a header name, such as "
                    "X-Forwarded-User"
                )
        if len(self.secret) < 16:
            raise ConfigurationError("the console's secret must be at least 16 bytes")


def parse_users(text: str) -> dict[str, str]:
    """``alice:s3cret,bob:other`` as users and their passwords."""
    users: dict[str, str] = {}
    for entry in filter(None, (part.strip() for part in text.split(","))):
        user, colon, password = entry.partition(":")
        if not colon or not user or not password:
            raise ConfigurationError(
                f"basic auth entry {user or entry!r} must be user:password (several "
                "separated by commas)"
            )
        if user in users:
            raise ConfigurationError(f"basic auth names user {user!r} twice")
        users[user] = password
    if not users:
        raise ConfigurationError("basic auth names no user: write user:password")
    return users


def parse_addr(text: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:9465`` for IPv6) as host and port."""
    host, colon, port_text = text.strip().rpartition(":")
    host = host.strip("[]")
    if not colon or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigurationError(
            f"address {text!r} must be host:port, for example {DEFAULT_ADDR} or [::1]:9465"
        )
    return host, int(port_text)


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach ``host``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
