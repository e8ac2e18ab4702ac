"""Which database the command line uses: one rule, the one the README and the settings
reference state, said on stderr whenever the command chose it itself.

``--dsn`` or ``OUTBOX_DSN`` if set; else PostgreSQL on 127.0.0.1:5432 as ``postgres`` if it
answers; else the embedded server (tests/integration/test_embedded.py starts that one).
``--database NAME`` picks another database on the same server."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result

import outbox.database
from outbox.cli import cli
from outbox.database import database_name, find_server, sqlalchemy_url, with_database
from outbox.errors import ConfigurationError
from outbox.settings import Settings


def invoke(*args: str, env: dict[str, str | None] | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env={"OUTBOX_DSN": None, **(env or {})})


@pytest.fixture
def local_server(monkeypatch: pytest.MonkeyPatch, server: str) -> str:
    """The test server standing in for 127.0.0.1:5432 (which it usually is)."""
    monkeypatch.setattr(outbox.database, "LOCAL_SERVER", server)
    return server


def test_outbox_dsn_is_used_as_it_is_and_nothing_is_said(db: sa.Engine, dsn: str) -> None:
    result = invoke("status", env={"OUTBOX_DSN": dsn})
    assert result.exit_code == 0, result.output
    assert "no live jobs" in result.stdout
    assert "OUTBOX_DSN" not in result.stderr


def test_dsn_option_wins_over_the_variable(db: sa.Engine, dsn: str) -> None:
    unreachable = "postgresql://postgres@127.0.0.1:1/nowhere"
    result = invoke("--dsn", dsn, "status", env={"OUTBOX_DSN": unreachable})
    assert result.exit_code == 0, result.output


def test_without_a_dsn_the_local_server_answers_and_stderr_says_so(
    db: sa.Engine, dsn: str, local_server: str
) -> None:
    name = sqlalchemy_url(dsn).database
    assert name
    result = invoke("--database", name, "status")
    assert result.exit_code == 0, result.output
    assert "no live jobs" in result.stdout
    host = sqlalchemy_url(local_server)
    assert result.stderr.startswith(
        f"No OUTBOX_DSN: using database {name} on the PostgreSQL at {host.host}:{host.port}"
    )


def test_without_a_dsn_the_local_servers_postgres_database_is_the_default(
    local_server: str,
) -> None:
    server = find_server(Settings())
    assert (server.source, server.dsn) == ("local", local_server)


def test_database_option_names_the_database_of_a_given_dsn_too(db: sa.Engine, dsn: str) -> None:
    name = sqlalchemy_url(dsn).database
    assert name
    elsewhere = with_database(dsn, "postgres")
    result = invoke("--dsn", elsewhere, "--database", name, "status")
    assert result.exit_code == 0, result.output
    assert "no live jobs" in result.stdout


def test_database_option_refuses_a_name_that_is_not_an_identifier() -> None:
    result = invoke("--database", 'x"; DROP DATABASE y; --', "status")
    assert result.exit_code == 2
    assert "is not a plain PostgreSQL identifier" in result.output


def test_database_option_naming_no_database_fails_clearly(server: str) -> None:
    result = invoke("--dsn", server, "--database", "outbox_no_such_database", "status")
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: cannot reach the database:")
    assert "outbox_no_such_database" in result.stderr


@pytest.mark.parametrize("name", ["", "1abc", "a-b", "a b", "é", "a" * 64, "abc\n"])
def test_database_names_outbox_refuses(name: str) -> None:
    with pytest.raises(ConfigurationError, match="plain PostgreSQL identifier"):
        database_name(name)


@pytest.mark.parametrize("name", ["outbox_demo", "_x", "Demo2", "a" * 63])
def test_database_names_outbox_accepts(name: str) -> None:
    assert database_name(name) == name
