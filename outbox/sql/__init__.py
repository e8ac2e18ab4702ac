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
            found[name] = compact(body.strip().rstrip(";"))
    return found


#: The pieces of a statement: quoted text ('...', "...", $tag$...$tag$: kept exactly, line
#: breaks and all; an unclosed quote runs to the end), a comment, a line break, a run of
#: spaces and tabs, and anything else.
_PIECE = re.compile(
    r"""(?P<quoted>'[^']*(?:'|\Z)|"[^"]*(?:"|\Z)|(?P<tag>\$[A-Za-z_]*\$).*?(?:(?P=tag)|\Z))"""
    r"|(?P<comment>--[^\n]*)|(?P<newline>\n)|(?P<blank>[ \t]+)|[^'\"$\n \t-]+|.",
    re.DOTALL,
)


def compact(statement: str) -> str:
    """``statement`` as it is sent: without its ``--`` comments, indentation, runs of spaces
    and blank lines.

    The files keep their comments for people; the server need not parse them, and psycopg
    caches a statement's parsed placeholders only up to 4,096 characters: longer ones are
    parsed again on every execution (psycopg/_queries.py), which cost the relay about an
    eighth of its CPU in the claim and the completion. Text in quotes (``'...'``,
    ``"..."``, ``$tag$...$tag$``) is kept exactly, line breaks and all.
    """
    lines: list[str] = []
    line: list[str] = []
    for piece in _PIECE.finditer(statement):
        kind = piece.lastgroup
        if kind == "newline":
            lines.append("".join(line).rstrip())
            line = []
        elif kind == "blank":
            if line:  # indentation goes; a run of spaces (alignment) becomes one
                line.append(" ")
        elif kind != "comment":
            line.append(piece[0])
    lines.append("".join(line).rstrip())
    return "\n".join(kept for kept in lines if kept)


def pyformat(statement: str) -> str:
    """The statement with psycopg's ``%(name)s`` placeholders, for use without SQLAlchemy."""
    return _BIND.sub(r"%(\1)s", statement.replace("%", "%%"))


queries: dict[str, str] = load(__name__)
