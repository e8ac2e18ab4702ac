"""Named SQL statements, one ``.sql`` file per concern.

Each statement sits under a ``-- name: <name>`` header followed by comment lines
saying what it does and which guarantee it upholds. A package's files are read
once, at import, into a dict (outbox's own: :data:`queries`). Statements use
SQLAlchemy's ``:name`` binds; :func:`pyformat` turns them into psycopg's.
"""

from __future__ import annotations

import re
from importlib import resources

_HEADER = re.compile(r"^-- name: ([a-z_]+)\s*$", re.MULTILINE)
_BIND = re.compile(r"(?<![:\w]):(\w+)")


def load(package: str) -> dict[str, str]:
    """Every named statement in the ``.sql`` files of ``package``."""
    found: dict[str, str] = {}
    for entry in sorted(resources.files(package).iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".sql"):
            continue
        parts = _HEADER.split(entry.read_text(encoding="utf-8"))
        for name, body in zip(parts[1::2], parts[2::2], strict=True):
            if name in found:
                raise RuntimeError(f"query {name!r} is defined twice ({entry.name})")
            found[name] = body.strip().rstrip(";")
    return found


def pyformat(statement: str) -> str:
    """The statement with psycopg's ``%(name)s`` placeholders, for use without SQLAlchemy."""
    return _BIND.sub(r"%(\1)s", statement.replace("%", "%%"))


queries: dict[str, str] = load(__name__)
