"""Standard Webhooks signatures (https://www.standardwebhooks.com), both sides.

A sender signs ``<webhook-id>.<webhook-timestamp>.<body>`` with HMAC-SHA256 under each of its
secrets and sends ``webhook-signature: v1,<base64> v1,<base64>``; a receiver accepts the
request when one of those matches one of its own secrets and the timestamp is recent. Several
secrets on either side are how a secret is rotated without a window where deliveries fail.

This module needs nothing beyond the standard library, so a receiver can verify without the
``webhooks`` extra: ``from outbox.publish.signing import verify_webhook``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import time
from collections.abc import Iterable, Mapping
from datetime import datetime

from outbox.errors import ConfigurationError, OutboxError
from outbox.storable import encodable

#: The prefix of a secret in its text form: ``whsec_`` then the key in base64.
SECRET_PREFIX = "whsec_"
#: Header names of the Standard Webhooks spec.
ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER = (
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
)
#: Seconds a receiver accepts between a request's timestamp and its own clock, either way.
TOLERANCE = 300

Secrets = str | bytes | Iterable[str | bytes]


class WebhookVerificationError(OutboxError, ValueError):
    """A webhook request is not signed by any of the receiver's secrets, is signed too long
    ago (or too far ahead), or lacks the Standard Webhooks headers: do not act on it."""


def secret_key(secret: str | bytes) -> bytes:
    """The HMAC key of a secret: ``whsec_<base64>`` (or the base64 alone) decoded, or raw bytes.

    Raises :class:`~outbox.errors.ConfigurationError` for an empty or malformed secret.
    """
    if isinstance(secret, bytes):
        key = secret
    elif isinstance(secret, str):
        text = secret.removeprefix(SECRET_PREFIX)
        try:
            key = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise ConfigurationError(
                "a webhook secret is 'whsec_' followed by base64 (as Standard Webhooks "
                "providers show it), or raw bytes; this one is not valid base64"
            ) from None
    else:
        raise ConfigurationError(
            f"a webhook secret is a str ('whsec_...') or bytes, not {type(secret).__name__}"
        )
    if not key:
        raise ConfigurationError("a webhook secret is empty: give at least one byte of key")
    return key


def secret_keys(secrets: Secrets) -> tuple[bytes, ...]:
    """One secret or several (rotation), as HMAC keys; at least one."""
    if isinstance(secrets, str | bytes):
        return (secret_key(secrets),)
    if not isinstance(secrets, Iterable):
        raise ConfigurationError(
            f"a webhook secret is a str ('whsec_...') or bytes, not {type(secrets).__name__}"
        )
    keys = tuple(secret_key(secret) for secret in secrets)
    if not keys:
        raise ConfigurationError("no webhook secret given: give one, or a list for rotation")
    return keys


def _timestamp(timestamp: int | datetime) -> int:
    if isinstance(timestamp, datetime):
        return int(timestamp.timestamp())
    if isinstance(timestamp, bool) or not isinstance(timestamp, int):
        raise TypeError(f"timestamp is whole seconds (int) or a datetime, not {timestamp!r}")
    return timestamp


def _digest(key: bytes, msg_id: str, timestamp: int, body: bytes) -> bytes:
    signed = b"%s.%d.%s" % (msg_id.encode(), timestamp, body)
    return hmac.new(key, signed, hashlib.sha256).digest()


def sign(secret: Secrets, msg_id: str, timestamp: int | datetime, body: bytes | str) -> str:
    """The ``webhook-signature`` header value: ``v1,<base64>``, one per secret, space-separated.

    ``timestamp`` is Unix seconds (what ``webhook-timestamp`` carries) or a datetime; ``body``
    is the exact bytes sent (a str is encoded as UTF-8).
    """
    if not isinstance(msg_id, str):
        raise TypeError(f"msg_id is the message id as a str, not {type(msg_id).__name__}")
    if not isinstance(body, bytes | bytearray | memoryview | str):
        raise TypeError(f"body is the exact bytes sent (or a str), not {type(body).__name__}")
    raw = body.encode() if isinstance(body, str) else bytes(body)
    return signature(secret_keys(secret), msg_id, _timestamp(timestamp), raw)


def signature(keys: tuple[bytes, ...], msg_id: str, timestamp: int, body: bytes) -> str:
    """:func:`sign` for keys already decoded by :func:`secret_keys`: a sender's hot path."""
    return " ".join(
        "v1," + base64.b64encode(_digest(key, msg_id, timestamp, body)).decode() for key in keys
    )


def _check_seconds(name: str, value: object, *, low: float | None = None, what: str = "") -> None:
    """Refuse a ``tolerance`` or ``now`` that is not a finite number of seconds (a NaN
    tolerance would compare false with every skew and let any old request through)."""
    fine = (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (low is None or value >= low)
    )
    if not fine:
        raise ConfigurationError(f"{name} must be {what or 'seconds, 0 or more'}, not {value!r}")


#: The name :mod:`outbox.publish` exports :func:`sign` under.
sign_webhook = sign


def verify_webhook(
    body: bytes | str,
    headers: Mapping[str, str],
    secrets: Secrets,
    *,
    tolerance: float = TOLERANCE,
    now: float | None = None,
) -> str:
    """Check a received webhook's signature and timestamp; return its ``webhook-id``.

    ``body`` is the raw request body, exactly as received (not parsed and re-encoded);
    ``headers`` the request's headers (names in any case); ``secrets`` the receiver's
    secret, or several while one is being rotated. The id returned is the message id to
    dedupe with: ``outbox.inbox(session, "billing", verify_webhook(...))``.

    Raises :class:`WebhookVerificationError` saying what was wrong; the request must then be
    refused (HTTP 400 or 401), never applied.
    """
    _check_seconds("tolerance", tolerance, low=0.0)
    if now is not None:
        _check_seconds("now", now, what="Unix seconds or None")
    if not isinstance(body, bytes | bytearray | memoryview | str):
        raise ConfigurationError(
            f"pass the raw request body as bytes or str, not {type(body).__name__} (the "
            "signature covers the bytes as received, not what they parse to)"
        )
    if not callable(getattr(headers, "items", None)):  # a Mapping, or a framework's headers
        raise ConfigurationError(
            f"headers must be a mapping of names to values, not {type(headers).__name__}"
        )
    keys = secret_keys(secrets)
    found = {str(name).lower(): value for name, value in headers.items()}
    for name in (ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER):
        if name in found and not isinstance(found[name], str):
            raise ConfigurationError(
                f"header {name} must be a str, not {type(found[name]).__name__}"
            )
    missing = [h for h in (ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER) if h not in found]
    if missing:
        raise WebhookVerificationError(
            f"not a Standard Webhooks request: header {', '.join(missing)} missing"
        )
    msg_id, stamp, signatures = found[ID_HEADER], found[TIMESTAMP_HEADER], found[SIGNATURE_HEADER]
    if not msg_id.isascii() and not encodable(msg_id):
        raise WebhookVerificationError(f"webhook-id is not valid text: {msg_id[:40]!r}")
    try:
        at = int(stamp)
    except ValueError:
        raise WebhookVerificationError(
            f"webhook-timestamp is not whole Unix seconds: {stamp[:40]!r}"
        ) from None
    skew = (time.time() if now is None else now) - at
    if skew > tolerance:
        raise WebhookVerificationError(
            f"webhook-timestamp is {skew:.0f}s old, past the {tolerance:g}s tolerance: "
            "a replay, or a clock out of step"
        )
    if skew < -tolerance:
        raise WebhookVerificationError(
            f"webhook-timestamp is {-skew:.0f}s ahead of this clock, past the "
            f"{tolerance:g}s tolerance"
        )
    raw = body.encode() if isinstance(body, str) else body
    expected = [_digest(key, msg_id, at, raw) for key in keys]
    for entry in signatures.split():
        version, _, encoded = entry.partition(",")
        if version != "v1":
            continue
        try:
            given = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            continue
        if any(hmac.compare_digest(given, digest) for digest in expected):
            return msg_id
    raise WebhookVerificationError(
        "no webhook-signature matches this body under the given secret(s): a wrong secret, "
        "or a body changed on the way (verify the raw bytes, before any JSON parsing)"
    )


__all__ = [
    "ID_HEADER",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "TOLERANCE",
    "Secrets",
    "WebhookVerificationError",
    "secret_key",
    "secret_keys",
    "sign",
    "sign_webhook",
    "signature",
    "verify_webhook",
]
