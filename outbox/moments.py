"""Times and durations as people read and write them: one printed form, read back by every
``--since`` and by the console's filters."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def moment(value: datetime | None) -> str:
    """A time as every table prints it: ISO 8601 in UTC to the second, ``2026-12-04T14:50:14Z``.

    It is the form ``--since`` reads back, so an operator can paste it.
    """
    if value is None:
        return ""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def duration(seconds: float | None) -> str:
    """A duration rounded for people: ``<0.1ms``, ``0.4ms``, ``12ms``, ``1.2s``, ``3m 4s``,
    ``2h 5m``, ``3d 4h``."""
    if seconds is None:
        return ""
    if seconds < 0.00005:
        return "<0.1ms"
    if seconds < 0.01:
        return f"{seconds * 1000:.1f}ms"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 59.95:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    for big, big_name, small, small_name in (
        (86_400, "d", 3600, "h"), (3600, "h", 60, "m"), (60, "m", 1, "s"),
    ):  # fmt: skip
        if whole >= big:
            return f"{whole // big}{big_name} {whole % big // small}{small_name}"
    return f"{whole}s"  # pragma: no cover - whole >= 60 here


def parse_moment(text: str, *, now: datetime | None = None) -> datetime:
    """A point in time as an operator writes it: an ISO 8601 time as the commands print it
    (``2026-12-04T14:50:14Z``, ``2026-12-04 14:50:14.5+00:00``, ``2026-12-04``; UTC unless an
    offset is given), or a time ago: ``90s``, ``30m``, ``1h``, ``2d``, ``1w``.

    Raises ValueError saying which forms are accepted.
    """
    relative = _RELATIVE.match(text)
    if relative is not None:
        try:
            ago = timedelta(seconds=float(relative[1]) * _UNIT_SECONDS[relative[2]])
            return (now or datetime.now(UTC)) - ago
        except OverflowError:
            raise ValueError(f"{text.strip()!r} is further back than any time can be") from None
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time: write one as the commands print it "
            "(2026-12-04T14:50:14Z, or 2026-12-04; UTC unless an offset is given) "
            "or a time ago (90s, 30m, 1h, 2d, 1w)"
        ) from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
