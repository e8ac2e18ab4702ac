"""The command line answers --help, and refuses a DSN it cannot use, without a database."""

from __future__ import annotations

import os

import pytest
from click.testing import CliRunner, Result

from outbox.cli import cli

SECRET = "s3cr3t-pw"


def run(*args: str) -> Result:
    """The CLI with no OUTBOX_* variable of this machine's environment in the way."""
    unset: dict[str, str | None] = {k: None for k in os.environ if k.startswith("OUTBOX_")}
    return CliRunner().invoke(cli, list(args), env=unset)


def test_top_level_help_lists_every_command() -> None:
    result = run("--help")
    assert result.exit_code == 0, result.output
    assert "--dsn URL" in result.output
    for command in ("migrate", "status", "demo", "jobs"):
        assert f"\n  {command} " in result.output


def test_short_help_option_works_too() -> None:
    assert run("-h").output == run("--help").output


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("migrate", "--revision TEXT"),
        ("status", "--json"),
        ("demo", "--transfers INTEGER RANGE"),
        ("jobs", "retry"),
    ],
)
def test_subcommand_help_exits_0_and_shows_its_options(command: str, expected: str) -> None:
    result = run(command, "--help")
    assert result.exit_code == 0, result.output
    assert f"Usage: cli {command} [OPTIONS]" in result.output
    assert expected in result.output


def test_version_is_shown() -> None:
    result = run("--version")
    assert result.exit_code == 0
    assert "version" in result.output


@pytest.mark.parametrize("command", ["status", "migrate", "demo"])
def test_unsupported_dsn_is_a_usage_error_with_a_clear_message(command: str) -> None:
    result = run("--dsn", "mysql://x", command)
    assert result.exit_code == 2
    assert "Error: DSN scheme 'mysql' is not supported: use postgresql://" in result.output


def test_usage_error_does_not_show_the_password() -> None:
    result = run("--dsn", f"postgresql+asyncpg://u:{SECRET}@h/db", "status")
    assert result.exit_code == 2
    assert "'postgresql+asyncpg' is not supported" in result.output
    assert SECRET not in result.output


def test_unknown_command_is_a_usage_error() -> None:
    result = run("frobnicate")
    assert result.exit_code == 2
    assert "No such command 'frobnicate'" in result.output


def test_dsn_with_a_bad_port_is_a_usage_error() -> None:
    result = run("--dsn", f"postgresql://u:{SECRET}@h:notaport/db", "status")
    assert result.exit_code == 2
    assert "port" in result.output
    assert SECRET not in result.output
