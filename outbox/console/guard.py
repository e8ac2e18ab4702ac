"""Who is at the console, and whether a POST really comes from its own pages.

Sign-in is HTTP basic auth against the configured users (over TLS at the proxy in production):
the signed-in name is the actor history records for every action. Without users, the console
answers only on loopback (``outbox ui`` refuses otherwise) and actions are recorded as
:data:`ANONYMOUS`.

A cross-site request is refused twice over: the browser's own ``Origin`` and
``Sec-Fetch-Site`` headers must name this console, and the form must carry a token only its
pages hold (an HMAC of the actor under the console's secret).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Mapping
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

#: The actor of actions taken on a console without sign-in.
ANONYMOUS = "console (no sign-in)"
#: The form field (or header, for htmx) that carries the anti-forgery token.
TOKEN_FIELD = "csrf_token"
TOKEN_HEADER = "x-csrf-token"


class SignIn:
    """Basic auth in front of every path: a missing or wrong password gets 401 and the
    browser's sign-in prompt. The user's name is put in ``scope["state"]["actor"]``."""

    def __init__(self, app: ASGIApp, users: Mapping[str, str], realm: str = "outbox") -> None:
        self.app = app
        # compared as SHA-256 digests: equal lengths, so the time taken says nothing of a
        # password's length, and an unknown user costs what a known one does
        self.users = {name: _digest(password) for name, password in users.items()}
        self._nobody = _digest(secrets.token_hex(16))
        self.realm = realm

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        user = self._user(Headers(scope=scope).get("authorization"))
        if user is None:
            await send({
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"www-authenticate", f'Basic realm="{self.realm}", charset="UTF-8"'.encode()),
                    (b"content-type", b"text/plain; charset=utf-8"),
                ],
            })  # fmt: skip
            await send({"type": "http.response.body", "body": b"sign in to use this console\n"})
            return
        scope.setdefault("state", {})["actor"] = user
        await self.app(scope, receive, send)

    def _user(self, header: str | None) -> str | None:
        scheme, _, encoded = (header or "").partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        expected = self.users.get(user)
        matched = hmac.compare_digest(_digest(password), expected or self._nobody)
        return user if matched and expected is not None else None


class ProxyUser:
    """Sign-in done by a reverse proxy in front (oauth2-proxy, an SSO gateway), which names
    the user in a header: that name is the actor. A request without it is refused (401), so a
    proxy that forgot to sign someone in cannot make an anonymous actor. Only safe where no
    one but the proxy reaches the console."""

    def __init__(self, app: ASGIApp, header: str) -> None:
        self.app = app
        self.header = header

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        user = (Headers(scope=scope).get(self.header) or "").strip()
        if not user:
            body = f"the proxy in front did not name the user ({self.header})\n".encode()
            await send({
                "type": "http.response.start", "status": 401,
                "headers": [(b"content-type", b"text/plain; charset=utf-8")],
            })  # fmt: skip
            await send({"type": "http.response.body", "body": body})
            return
        scope.setdefault("state", {})["actor"] = user[:200]
        await self.app(scope, receive, send)


def _digest(password: str) -> bytes:
    return hashlib.sha256(password.encode()).digest()


def actor(request: Request) -> str:
    """Who is acting: the signed-in user, or :data:`ANONYMOUS`."""
    return str(getattr(request.state, "actor", ANONYMOUS))


def token(secret: bytes, who: str) -> str:
    """The anti-forgery token of ``who``'s forms: only a page this console served holds it."""
    return hmac.new(secret, f"csrf:{who}".encode(), hashlib.sha256).hexdigest()


def forged(request: Request, secret: bytes, sent: str | None) -> str | None:
    """Why a POST must be refused as cross-site, or None when it came from this console."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return f"the request came from another site (Sec-Fetch-Site: {site})"
    origin = request.headers.get("origin")
    if origin is not None and origin != "null":
        if urlsplit(origin).netloc != request.headers.get("host"):
            return f"the request came from {origin}, not from this console"
    elif origin == "null":
        return "the request came from an opaque origin"
    if not sent or not hmac.compare_digest(sent, token(secret, actor(request))):
        return "the form carries no valid token of this console: reload the page and retry"
    return None
