"""``outbox demo`` works in a database of its own, named by ``--database``, and never drops
one it did not make; at the end it prints the command that shows that database."""

from __future__ import annotations

import json
import secrets
import shlex
from collections.abc import Iterator

import psycopg
import pytest
from click.testing import CliRunner, Result

import outbox.database
from outbox.cli import cli
from outbox.database import libpq_dsn, sqlalchemy_url, with_database
from outbox.demo.run import MARKER, demo_database
from outbox.errors import ConfigurationError


def invoke(*args: str, env: dict[str, str | None] | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env={"OUTBOX_DSN": None, **(env or {})})


def admin(server: str, sql: str, *params: object) -> list[tuple[object, ...]]:
    with psycopg.connect(libpq_dsn(server), autocommit=True) as conn:
        cursor = conn.execute(sql.encode(), params or None)
        return cursor.fetchall() if cursor.description else []


def comment(server: str, name: str) -> object:
    rows = admin(
        server,
        "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
        name,
    )
    return rows[0][0] if rows else "absent"


@pytest.fixture
def name(server: str) -> Iterator[str]:
    """A database name of this test's own, dropped after it."""
    made = f"outbox_demo_test_{secrets.token_hex(4)}"
    yield made
    admin(server, f'DROP DATABASE IF EXISTS "{made}" WITH (FORCE)')


def test_demo_in_a_named_database_leaves_the_command_that_shows_it(
    server: str, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No DSN: the demo says which server it chose, and its last line, run as printed,
    shows the demo's queues (what `make demo` then `outbox status` needs)."""
    monkeypatch.setattr(outbox.database, "LOCAL_SERVER", server)
    result = invoke("demo", "--database", name, "--transfers", "4")
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith("No OUTBOX_DSN: using database postgres on the PostgreSQL")
    last = result.stdout.strip().splitlines()[-1]
    assert last == f"inspect it with: outbox --database {name} status"
    assert comment(server, name) == MARKER
    shown = invoke(*shlex.split(last.removeprefix("inspect it with: "))[1:], "--json")
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["last_minute"]["ledger"] == {"succeeded": 4}


def inspect_line(dsn: str, name: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The command the demo would print last, given ``dsn``, without running the ledger."""
    from outbox.demo import run as demo_run

    printed: list[str] = []

    def run(server: str, console: object, **options: object) -> bool:
        printed.append(str(options["inspect"]))
        return True

    monkeypatch.setattr(demo_run, "run", run)
    result = invoke("--dsn", dsn, "demo", "--database", name)
    assert result.exit_code == 0, result.output
    return printed[0]


def test_demo_given_a_dsn_prints_that_dsn_with_the_demos_database(
    server: str, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = sqlalchemy_url(with_database(server, name)).set(drivername="postgresql")
    line = inspect_line(server, name, monkeypatch)
    assert line == f"OUTBOX_DSN='{expected.render_as_string()}' outbox status"


def test_demo_hides_a_password_it_was_given(
    server: str, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with_password = sqlalchemy_url(server).set(password="s3cret")
    line = inspect_line(with_password.render_as_string(False), name, monkeypatch)
    assert "s3cret" not in line
    assert ":***@" in line
    assert line.endswith("(with your password in place of ***)")


def test_demo_remakes_a_database_an_earlier_demo_made(server: str, name: str) -> None:
    with demo_database(server, name) as dsn:
        admin(dsn, "CREATE TABLE left_by_the_last_demo (n int)")
    with demo_database(server, name) as dsn:
        assert admin(dsn, "SELECT to_regclass('left_by_the_last_demo')") == [(None,)]
    assert comment(server, name) == MARKER


def test_demo_refuses_a_database_it_did_not_make_and_leaves_it_whole(
    server: str, name: str
) -> None:
    admin(server, f'CREATE DATABASE "{name}"')
    precious = with_database(server, name)
    admin(precious, "CREATE TABLE accounts (n int); INSERT INTO accounts VALUES (42)")
    result = invoke("--dsn", server, "demo", "--database", name)
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: database {name} exists and the demo did not make it")
    assert "--database NAME" in result.stderr
    assert admin(precious, "SELECT n FROM accounts") == [(42,)]


def test_demo_refuses_a_database_with_another_comment(server: str, name: str) -> None:
    admin(server, f'CREATE DATABASE "{name}"')
    admin(server, f"COMMENT ON DATABASE \"{name}\" IS 'payments, production'")
    refused = pytest.raises(ConfigurationError, match="the demo did not make it")
    with refused, demo_database(server, name):
        pass
    assert comment(server, name) == "payments, production"


def test_demo_refuses_a_name_that_is_not_an_identifier(server: str) -> None:
    result = invoke("--dsn", server, "demo", "--database", "production; DROP")
    assert result.exit_code == 2
    assert "Invalid value for '--database'" in result.output
    assert "plain PostgreSQL identifier" in result.output
    assert comment(server, "production; DROP") == "absent"


def test_demo_remakes_its_database_when_the_dsn_names_it(server: str, name: str) -> None:
    """The printed OUTBOX_DSN names the demo's database: running the demo with it again
    must work (a session cannot drop the database it is in)."""
    with demo_database(server, name):
        pass
    with demo_database(with_database(server, name), name) as dsn:
        assert sqlalchemy_url(dsn).database == name
    assert comment(server, name) == MARKER


def test_demo_without_createdb_says_what_to_do(server: str, name: str) -> None:
    role = f"outbox_demo_nocreatedb_{secrets.token_hex(3)}"
    admin(server, f"CREATE ROLE {role} LOGIN PASSWORD 'pw' NOCREATEDB")
    try:
        limited = sqlalchemy_url(server).set(username=role, password="pw")
        refused = pytest.raises(ConfigurationError, match="give the role CREATEDB")
        with refused, demo_database(limited.render_as_string(hide_password=False), name):
            pass
        assert comment(server, name) == "absent"
    finally:
        admin(server, f"DROP ROLE {role}")
