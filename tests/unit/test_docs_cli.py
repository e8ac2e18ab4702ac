"""The CLI reference shows what the commands really print: every ``$ outbox ... --help`` in
docs/reference/cli.md equals the command's own help as an 80-column terminal shows it (click
writes 78 columns of text there)."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from outbox.cli import cli

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "reference" / "cli.md"
BLOCK = re.compile(r"^```console\n(.*?)^```", re.MULTILINE | re.DOTALL)


def documented_help() -> dict[str, str]:
    """Each ``$ outbox ... --help`` of the reference, with the text shown after it."""
    shown: dict[str, str] = {}
    for block in BLOCK.findall(REFERENCE.read_text()):
        for part in re.split(r"^\$ ", block, flags=re.MULTILINE)[1:]:
            command, _, output = part.partition("\n")
            if command.startswith("outbox") and command.endswith("--help"):
                shown[command] = output
    return shown


def normal(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip().splitlines())


HELP = documented_help()


def test_the_reference_shows_the_help_of_every_command() -> None:
    assert "outbox --help" in HELP
    assert {"outbox relay --help", "outbox jobs show --help", "outbox audit verify --help"} <= set(
        HELP
    )


@pytest.mark.parametrize("command", sorted(HELP))
def test_documented_help_is_what_the_command_prints(command: str) -> None:
    unset: dict[str, str | None] = {k: None for k in os.environ if k.startswith("OUTBOX_")}
    result = CliRunner().invoke(
        cli, shlex.split(command)[1:], env={**unset, "COLUMNS": "80"},
        prog_name="outbox", terminal_width=78,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert normal(result.output) == normal(HELP[command])
