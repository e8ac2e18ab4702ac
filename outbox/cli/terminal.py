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

from rich.text import Text

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
