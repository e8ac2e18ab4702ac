"""Checks on every option a job can carry (G8): refuse early, say why, write nothing."""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from outbox.errors import InvalidJob, PayloadNotJSON, PayloadTooLarge

TYPE_MAX = 128
#: Jobs of type ``publish:<destination>`` carry a message for that destination.
PUBLISH_PREFIX = "publish:"
QUEUE_MAX = 64
KEY_MAX = 255
PRIORITY_MIN, PRIORITY_MAX = 0, 100
ATTEMPTS_MAX = 1000
#: The range of run_at in UTC: what any session's time zone can read back as a datetime.
RUN_AT_EARLIEST = datetime(1, 1, 2, tzinfo=UTC)
RUN_AT_LATEST = datetime(9999, 12, 31, tzinfo=UTC)
MAX_DELAY = timedelta(days=3660)  # ten years: anything later is a mistake, or a run_at

_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/-]*")
_QUEUE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # C0, DEL and C1
#: Categories of characters that show nothing: a key of only these looks empty (or like
#: another key) wherever it is printed. Control characters are refused on their own.
_INVISIBLE = frozenset({"Cf", "Zs", "Zl", "Zp"})
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")
_HINTS = {
    "Decimal": "pass amounts as str(amount) or as integer minor units",
    "datetime": "pass datetime.isoformat()",
    "date": "pass date.isoformat()",
    "UUID": "pass str(uuid)",
    "bytes": "pass base64 text",
    "set": "pass a sorted list",
}


def job_type(value: object) -> str:
    return _name(value, "type", TYPE_MAX, _TYPE, "letters, digits and _ . : / -")


def queue(value: object) -> str:
    return _name(value, "queue", QUEUE_MAX, _QUEUE, "letters, digits and _ . -")


def _name(value: object, what: str, limit: int, pattern: re.Pattern[str], allowed: str) -> str:
    if not isinstance(value, str):
        raise InvalidJob(f"job {what} must be a str, not {type(value).__name__}")
    if not value:
        raise InvalidJob(f"job {what} must not be empty")
    if len(value) > limit:
        raise InvalidJob(
            f"job {what} {value[:40]!r}... is {len(value)} characters; at most {limit}"
        )
    if not pattern.fullmatch(value):
        raise InvalidJob(
            f"job {what} {value!r} may hold only {allowed}, and must start with a letter or digit"
        )
    return value


def key(value: object, what: str = "key") -> str | None:
    """An ordering key or idempotency key: text with something visible in it, and without
    control characters (C0, DEL or C1)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidJob(f"{what} must be a str or None, not {type(value).__name__}")
    if not value.strip():
        raise InvalidJob(f"{what} must not be empty or blank; pass None for no {what}")
    if not value.isascii() and _invisible(value):
        raise InvalidJob(
            f"{what} must not be empty or blank: {value!r} holds only invisible characters; "
            f"pass None for no {what}"
        )
    if len(value) > KEY_MAX:
        raise InvalidJob(f"{what} {value[:40]!r}... is {len(value)} characters; at most {KEY_MAX}")
    if _CONTROL.search(value):
        raise InvalidJob(f"{what} {value!r} contains a control character")
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError:
            raise InvalidJob(f"{what} {value!r} is not valid Unicode") from None
    return value


def _invisible(text: str) -> bool:
    category = unicodedata.category
    return all(c.isspace() or category(c) in _INVISIBLE for c in text)


def priority(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidJob(f"priority must be an int, not {type(value).__name__}")
    if not PRIORITY_MIN <= value <= PRIORITY_MAX:
        raise InvalidJob(
            f"priority {value} is out of range: use {PRIORITY_MIN} (most urgent, the default) "
            f"to {PRIORITY_MAX} (least urgent)"
        )
    return value


def max_attempts(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidJob(f"max_attempts must be an int or None, not {type(value).__name__}")
    if not 1 <= value <= ATTEMPTS_MAX:
        raise InvalidJob(f"max_attempts must be between 1 and {ATTEMPTS_MAX}, not {value}")
    return value


def schedule(when: object, delay: object) -> tuple[datetime | None, timedelta | None]:
    """``(run_at, delay)`` as the statement takes them; neither means "once committed".

    A delay is returned as such so that it counts from the database's clock.
    """
    if when is not None and delay is not None:
        raise InvalidJob("give run_at or delay, not both")
    if when is not None:
        if not isinstance(when, datetime):
            raise InvalidJob(f"run_at must be a datetime, not {type(when).__name__}")
        if when.tzinfo is None or when.utcoffset() is None:
            raise InvalidJob(
                "run_at is a naive datetime; give it a time zone, e.g. datetime.now(UTC)"
            )
        try:
            utc = when.astimezone(UTC)
        except OverflowError:
            utc = None
        if utc is None or not RUN_AT_EARLIEST <= utc < RUN_AT_LATEST:
            # PostgreSQL would store it, but a connection in another time zone could not read
            # it back as a datetime: the claim, or a listing, would fail on it.
            raise InvalidJob(
                f"run_at {when.isoformat()} is outside {RUN_AT_EARLIEST:%Y-%m-%d} to "
                f"{RUN_AT_LATEST:%Y-%m-%d} in UTC (the years 1 to 9999, a day short of each end "
                "so that every time zone reads it)"
            )
        return when, None
    if delay is not None:
        return None, timedelta(seconds=_seconds(delay))
    return None, None


def positive_seconds(value: object, *, most: float = math.inf) -> bool:
    """Whether ``value`` is a number of seconds above 0 and at most ``most``: an int or a
    float, not a bool, not NaN, not infinite (a timeout of those would never end)."""
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and 0 < value <= most
    )


def _seconds(delay: object) -> float:
    if isinstance(delay, timedelta):
        seconds = delay.total_seconds()
    elif isinstance(delay, int | float) and not isinstance(delay, bool):
        try:
            seconds = float(delay)
        except OverflowError:
            raise InvalidJob(f"delay is more than {MAX_DELAY.days} days; use run_at") from None
    else:
        raise InvalidJob(f"delay must be a timedelta or seconds, not {type(delay).__name__}")
    if not math.isfinite(seconds) or seconds < 0:
        raise InvalidJob(f"delay must be zero or more seconds, not {delay!r}")
    if seconds > MAX_DELAY.total_seconds():
        raise InvalidJob(f"delay of {seconds:g}s is more than {MAX_DELAY.days} days; use run_at")
    return seconds


_CONTAINERS = (dict, list, tuple)  # a tuple: isinstance() checks it faster than a union
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
# The C encoder behind _ENCODER, made once instead of on every encode() call. Without
# cycle markers a cyclic payload recurses until RecursionError, which is refused below.
_c_make_encoder = getattr(json.encoder, "c_make_encoder", None)
_encode_chunks = (
    _c_make_encoder(
        None, _ENCODER.default, json.encoder.encode_basestring,
        None, ":", ",", False, False, False,
    )
    if _c_make_encoder is not None
    else None
)  # fmt: skip


def _encode(payload: dict[str, Any]) -> str:
    if _encode_chunks is None:  # pragma: no cover - CPython without its accelerator
        return _ENCODER.encode(payload)
    return "".join(_encode_chunks(payload, 0))


def encode_payload(payload: object, limit: int, noun: str = "payload") -> str:
    """The payload as compact JSON text, refused if it would not round-trip. A refusal
    speaks of the payload as ``noun`` (a publish job's payload is the caller's message)."""
    try:
        return _encode_payload(payload, limit)
    except InvalidJob as exc:
        if noun == "payload":
            raise
        raise type(exc)(noun + str(exc).removeprefix("payload")) from None


def _encode_payload(payload: object, limit: int) -> str:
    if not isinstance(payload, dict):
        if not isinstance(payload, Mapping):
            kind = type(payload).__name__
            raise PayloadNotJSON(
                f"payload must be a JSON object (a dict with str keys), not {kind}"
            )
        payload = dict(payload)
    try:
        text = _encode(payload)
    except TypeError as exc:
        raise PayloadNotJSON(_type_message(exc)) from None
    except ValueError as exc:  # NaN or infinity, or a cycle
        raise PayloadNotJSON(f"payload is not JSON: {exc}") from None
    except RecursionError:
        raise PayloadNotJSON("payload refers to itself or is nested too deeply") from None
    _check_keys(payload)  # after encoding, which has refused cycles
    if "\\u0000" in text and _NUL_ESCAPE.search(text):
        raise PayloadNotJSON("payload holds a NUL character (\\u0000), which PostgreSQL refuses")
    if ("e+" in text or "-0.0" in text) and _INEXACT.search(text):  # rare: walk it again
        text = _exact(payload)
    try:
        size = len(text) if text.isascii() else len(text.encode())
    except UnicodeEncodeError:
        raise PayloadNotJSON(
            "payload holds text that is not valid Unicode (a lone surrogate such as '\\ud800')"
        ) from None
    if size > limit:
        raise PayloadTooLarge(
            f"payload is {size} bytes of JSON; the limit is {limit} "
            "(store large data in your own table and pass its id)"
        )
    return text


# jsonb keeps a number as numeric and prints it back without an exponent, so a float that
# Python writes with one (1e+16) would come back an int (10000000000000000), and -0.0 as 0.0.
# Either shows in the text as written; a string that merely looks like one costs a re-encoding.
_INEXACT = re.compile(r"[0-9]e\+|-0\.0(?![0-9])")
_encode_text = json.encoder.encode_basestring


def _exact(payload: dict[str, Any]) -> str:
    """The payload's JSON with each float written as jsonb gives the same float back."""
    try:
        return _exact_value(payload)
    except RecursionError:
        raise PayloadNotJSON("payload refers to itself or is nested too deeply") from None


def _exact_value(value: Any) -> str:
    # The types, in the order, that the encoder took them: nothing else got this far.
    if isinstance(value, str):
        return _encode_text(value)
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, float):
        return _float(value)
    parts = []
    if isinstance(value, dict):
        for k, v in value.items():
            parts.append(f"{_encode_text(k)}:{_exact_value(v)}")
        return "{" + ",".join(parts) + "}"
    for v in value:
        parts.append(_exact_value(v))
    return "[" + ",".join(parts) + "]"


def _float(value: float) -> str:
    text = float.__repr__(value)
    if "e+" in text:  # 1e+16: written out, with a decimal point, it stays a float in jsonb
        return f"{Decimal(text):f}.0"
    if value == 0 and math.copysign(1, value) < 0:
        raise PayloadNotJSON(
            "payload holds -0.0, which jsonb stores as 0 (its sign would be lost); pass 0.0"
        )
    return text


def _check_keys(value: dict[Any, Any] | list[Any] | tuple[Any, ...]) -> None:
    """The encoder turns 1 into "1" silently; a handler would then read another payload."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for k, v in item.items():
                if type(k) is not str:
                    kind = type(k).__name__
                    article = "an" if kind[0] in "aeiou" else "a"
                    raise PayloadNotJSON(
                        f"payload key {k!r} is {article} {kind}; JSON object keys must be str"
                    )
                if isinstance(v, _CONTAINERS):
                    stack.append(v)
        else:
            stack.extend(v for v in item if isinstance(v, _CONTAINERS))


def _type_message(exc: TypeError) -> str:
    text = str(exc)
    for name, hint in _HINTS.items():
        if f"type {name} " in text:
            return f"payload is not JSON: {text}; {hint}"
    return f"payload is not JSON: {text}"
