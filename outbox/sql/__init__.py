"""Named SQL statements, one ``.sql`` file per concern.

Each statement sits under a ``-- name: <name>`` header followed by comment lines
saying what it does and which guarantee it upholds. They are read once, at
import, into :data:`queries`.
"""

from __future__ import annotations

import re
from importlib import resources

_HEADER = re.compile(r"^-- name: ([a-z_]+)\s*$", re.MULTILINE)


def _load() -> dict[str, str]:
    found: dict[str, str] = {}
    for entry in sorted(resources.files(__name__).iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".sql"):
            continue
        parts = _HEADER.split(entry.read_text(encoding="utf-8"))
        for name, body in zip(parts[1::2], parts[2::2], strict=True):
            if name in found:
                raise RuntimeError(f"query {name!r} is defined twice ({entry.name})")
            found[name] = body.strip().rstrip(";")
    return found


queries: dict[str, str] = _load()
