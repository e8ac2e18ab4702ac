"""Stored text as an operator's terminal may show it: literally, with control characters visible.

Keys, error messages, reasons, actors and relay names come from applications, handlers and
operators. Given to rich as they are, ``GET [/v1/charges/ch_1]`` crashes the command (a closing
tag that matches nothing), ``[red]`` or ``[link=...]`` restyles or relinks the output, and an
ESC sequence in a handler's error reaches the terminal. Every value read from the database goes
through :func:`literal` (for rich) or :func:`escape_controls` (for plain lines) before a person
sees it. JSON and CSV, which tools read, keep values exact.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import click
from rich import box
from rich.console import Console
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from outbox.moments import duration, moment, parse_moment

# C0, DEL and C1: ESC and CSI (\x9b) begin every sequence a terminal obeys, the rest move the
# cursor, ring, erase or end lines. Newline and tab are escaped too: one value, one line.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape_controls(text: str) -> str:
    r"""``text`` with each control character written as an escape: ``\x1b``, ``\x9b``, ``\n``.

    Backslashes are left as they are, so Windows paths and regular expressions in errors
    read as written; a literal ``\x1b`` in stored text therefore looks like an escaped ESC,
    which is harmless. ``--json`` tells them apart.
    """
    return _CONTROL.sub(lambda m: _SHORT.get(m[0], f"\\x{ord(m[0]):02x}"), text)


def literal(value: object) -> Text:
    """A stored value for a rich table: never read as markup or emoji codes, controls escaped,
    and None shown as nothing."""
    return Text("" if value is None else escape_controls(str(value)))


# -- times: the one printed form (outbox/moments.py), read back by --since -----------------


class Moment(click.ParamType[datetime]):
    """``--since``/``--until``: see :func:`parse_moment`."""

    name = "time"

    def get_metavar(self, param: click.Parameter, ctx: click.Context) -> str:
        return "TIME"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            return parse_moment(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def json_default(value: object) -> object:
    """For ``json.dumps``: times in ISO 8601 in UTC with their full precision, the rest (uuids)
    as text."""
    if isinstance(value, datetime):
        return (value.astimezone(UTC) if value.tzinfo else value).isoformat()
    return str(value)


# -- tables that fit 80 columns ------------------------------------------------------------


def console() -> Console:
    """The console of every table: the terminal's width, or ``COLUMNS`` (80 if unset) when
    the output is piped."""
    return Console(highlight=False)


def table(
    title: str | None, *columns: str, uuid: str | None = None, right: tuple[str, ...] = ()
) -> Table:
    """A table in the one style of the commands, every column folding its text rather than
    cutting it; the column named ``uuid`` never wraps (it is what an operator pastes next),
    and those named in ``right`` (counts) are right-aligned.
    """
    shown = Table(
        title=title,
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
    )
    for name in columns:
        whole = name == uuid
        shown.add_column(
            name,
            justify="right" if name in right else "left",
            no_wrap=whole,
            min_width=36 if whole else None,
            overflow="fold",
        )
    return shown


# -- history, one block per row ------------------------------------------------------------


def print_history(out: Console, rows: Iterable[Mapping[str, Any]], *, with_job: bool) -> None:
    """History rows as blocks that fit any width: a first line with the time, the job's uuid
    (``with_job``) and the event, then its fields as ``name=value``, then its reason and
    error each on a line of their own, indented and folded.
    """
    for row in rows:
        head = [moment(row["at"])]
        if with_job:
            head.append(str(row["job_uuid"]))
        head.append(row["event"] + (f" attempt {row['attempt']}" if row["attempt"] else ""))
        out.print(Text("  ".join(head)))
        names = ("type", "queue", "key") if with_job else ()
        fields = [(name, row.get(name)) for name in (*names, "relay", "actor")]
        if row.get("duration_ms") is not None:
            fields.append(("took", duration(row["duration_ms"] / 1000)))
        run_at = row.get("run_at")
        later = row["event"] == "enqueued" and run_at is not None and run_at > row["at"]
        if run_at is not None and (row["event"] == "retried" or later):
            fields.append(("runs_at", moment(run_at)))
        error = ": ".join(str(p) for p in (row.get("error_type"), row.get("error_message")) if p)
        print_details(out, fields, [("reason", row.get("reason")), ("error", error or None)])


def print_details(
    out: Console, fields: Iterable[tuple[str, object]], notes: Iterable[tuple[str, object]] = ()
) -> None:
    """Under a block's first line, indented: ``name=value`` fields on one folded line (a
    value of None is left out), then each note (free text) on lines of its own."""
    shown = [f"{name}={escape_controls(str(value))}" for name, value in fields if value is not None]
    if shown:
        out.print(Padding(Text("  ".join(shown)), (0, 0, 0, 4), expand=False))
    for name, value in notes:
        if value is not None:
            out.print(
                Padding(Text(f"{name}: {escape_controls(str(value))}"), (0, 0, 0, 4), expand=False)
            )


def plain_lines(text: str) -> list[str]:
    """Multi-line stored text (a traceback) as lines for a terminal, each line escaped."""
    return [escape_controls(line) for line in text.rstrip("\n").split("\n")]
