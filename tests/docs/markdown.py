"""The fenced code blocks of README.md and docs/**/*.md, with the marker written above each.

A marker is an HTML comment on the last non-blank line before the opening fence; it is
invisible where the page is rendered:

- ``<!-- fragment -->``: part of a larger program or session. A Python fragment must still
  compile; the ``$ outbox ...`` commands of a console fragment must still parse (the
  subcommands and options exist, the values are valid), but nothing is run.
- ``<!-- signature -->``: a Python block that shows the shape of an API, not code: not checked.
- ``<!-- unmigrated -->``: a console block whose commands run against a database that has
  no outbox tables yet (``outbox migrate`` on an empty database, say).
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import textwrap
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MARKERS = ("fragment", "signature", "unmigrated")
_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<ticks>`{3,})(?P<lang>[\w+-]*)[ \t]*$")
_MARKER = re.compile(r"^\s*<!--\s*(?P<name>[\w-]+)\s*-->\s*$")


@dataclasses.dataclass(frozen=True)
class Block:
    path: Path
    line: int  # of the opening fence, from 1
    lang: str
    text: str
    marker: str | None

    @property
    def where(self) -> str:
        shown = self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path
        return f"{shown}:{self.line}"

    def __str__(self) -> str:
        return f"{self.where} ({self.lang} block)"


@dataclasses.dataclass(frozen=True)
class Command:
    """One ``$ outbox ...`` line of a console block and the output shown under it."""

    env: dict[str, str]
    argv: list[str]  # after "outbox"
    line: str
    output: str


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def blocks(path: Path) -> Iterator[Block]:
    lines = path.read_text().splitlines()
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        end = index + 1
        closing = re.compile(rf"^[ \t]*{opening['ticks']}`*[ \t]*$")
        while end < len(lines) and not closing.match(lines[end]):
            end += 1
        body = textwrap.dedent("\n".join(lines[index + 1 : end]))
        yield Block(path, index + 1, opening["lang"], body + "\n", _marker_above(lines, index))
        index = end + 1


def _marker_above(lines: list[str], index: int) -> str | None:
    above = index - 1
    while above >= 0 and not lines[above].strip():
        above -= 1
    found = _MARKER.match(lines[above]) if above >= 0 else None
    return found["name"] if found else None


def all_blocks() -> list[Block]:
    return [block for path in pages() for block in blocks(path)]


def commands(block: Block) -> Iterator[Command]:
    """The ``$ outbox ...`` commands of a console block, ``--help`` ones left out."""
    for part in re.split(r"^\$ ", block.text, flags=re.MULTILINE)[1:]:
        line, _, output = part.partition("\n")
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            continue  # not a shell line outbox could run; another tool's
        env: dict[str, str] = {}
        while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
            name, _, value = words.pop(0).partition("=")
            env[name] = value
        if not words or words[0] != "outbox" or "--help" in words or "-h" in words:
            continue
        yield Command(env, words[1:], line, output)
