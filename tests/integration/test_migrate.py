"""Migrations: to head from nothing, idempotent, safe from many processes at once,
and the schema they build is the one the code's table objects describe."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from click.testing import CliRunner

from outbox import migrate
from outbox.cli import cli
from outbox.database import create_engine
from outbox.schema import metadata
from outbox.testing import temporary_database


@pytest.fixture
def empty(server: str) -> Iterator[str]:
    with temporary_database(server, prefix="outbox_mig", migrated=False) as dsn:
        yield dsn


def outbox_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "outbox", *args], capture_output=True, text=True, timeout=120
    )


def test_migrate_twice_upgrades_then_finds_nothing_to_do(empty: str) -> None:
    runner = CliRunner()
    first = runner.invoke(cli, ["--dsn", empty, "migrate"])
    assert first.exit_code == 0, first.output
    assert f"upgraded from nothing to {migrate.head()}" in first.output
    second = runner.invoke(cli, ["--dsn", empty, "migrate"])
    assert second.exit_code == 0, second.output
    assert f"already at {migrate.head()}" in second.output


def test_concurrent_migrations_from_several_processes_all_succeed(empty: str) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "outbox", "--dsn", empty, "migrate"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for _ in range(4)
    ]  # fmt: skip
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, outputs
    assert sum("upgraded from nothing" in out for out in outputs) == 1
    engine = create_engine(empty, poolclass=sa.NullPool)
    with engine.connect() as conn:
        assert migrate.current(conn) == migrate.head()
    engine.dispose()


def test_check_fails_before_migrating_and_passes_after(empty: str) -> None:
    before = outbox_cli("--dsn", empty, "migrate", "--check")
    assert before.returncode == 1
    assert "run `outbox migrate`" in before.stderr
    assert outbox_cli("--dsn", empty, "migrate").returncode == 0
    after = outbox_cli("--dsn", empty, "migrate", "--check")
    assert after.returncode == 0, after.stderr


def test_migrated_schema_matches_the_table_objects(dsn: str) -> None:
    engine = create_engine(dsn, poolclass=sa.NullPool)
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn,
            # Only the outbox's own tables: other tests of this database make tables of theirs.
            opts={
                "include_object": lambda o, n, t, r, c: (
                    t != "table" or (n.startswith("outbox_") and n != migrate.VERSION_TABLE)
                )
            },
        )
        assert compare_metadata(context, metadata) == []
    engine.dispose()


def test_downgrade_to_base_and_back(empty: str) -> None:
    engine = create_engine(empty, poolclass=sa.NullPool)
    migrate.upgrade(engine)
    with engine.connect() as conn:
        command.downgrade(migrate.alembic_config(conn), "base")
        conn.commit()
        tables = set(sa.inspect(conn).get_table_names())
        assert not {t for t in tables if t.startswith("outbox_")} - {migrate.VERSION_TABLE}
    assert migrate.upgrade(engine) == (None, migrate.head())
    engine.dispose()


def test_status_on_an_unmigrated_database_says_to_migrate(empty: str) -> None:
    result = outbox_cli("--dsn", empty, "status")
    assert result.returncode == 1
    assert "schema is at nothing" in result.stderr
    assert "outbox migrate" in result.stderr


def test_unreachable_database_is_a_clear_error() -> None:
    result = outbox_cli("--dsn", "postgresql://nobody@127.0.0.1:1/none", "migrate")
    assert result.returncode == 1
    assert "cannot reach the database" in result.stderr
    assert "Traceback" not in result.stderr


def test_unsupported_dsn_scheme_is_a_usage_error() -> None:
    result = outbox_cli("--dsn", "mysql://root@localhost/x", "status")
    assert result.returncode == 2
    assert "not supported" in result.stderr
