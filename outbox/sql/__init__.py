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


_DOLLAR = re.compile(r"\$[A-Za-z_]*\$")


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
    quote: str | None = None  # the closing quote (or dollar tag) of the text we are in
    at_line_start = True
    i = 0
    while i < len(statement):
        char = statement[i]
        if quote is None:
            if char == "\n":
                lines.append("".join(line).rstrip())
                line, at_line_start = [], True
                i += 1
                continue
            if char in " \t" and (at_line_start or (line and line[-1] == " ")):
                i += 1  # indentation, and runs of spaces (alignment), go
                continue
            if char == "\t":
                char = " "
            at_line_start = False
            if statement.startswith("--", i):
                while i < len(statement) and statement[i] != "\n":
                    i += 1
                continue
            dollar = _DOLLAR.match(statement, i) if char == "$" else None
            if dollar is not None:
                quote = dollar[0]
                line.append(quote)
                i += len(quote)
                continue
            if char in "'\"":
                quote = char
        elif statement.startswith(quote, i):
            line.append(quote)
            i += len(quote)
            quote = None
            continue
        line.append(char)
        i += 1
    lines.append("".join(line).rstrip())
    return "\n".join(kept for kept in lines if kept)


def pyformat(statement: str) -> str:
    """The statement with psycopg's ``%(name)s`` placeholders, for use without SQLAlchemy."""
    return _BIND.sub(r"%(\1)s", statement.replace("%", "%%"))


queries: dict[str, str] = load(__name__)
