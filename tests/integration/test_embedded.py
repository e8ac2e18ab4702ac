"""The embedded server: what the README's commands use where no server answers."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlalchemy.orm import Session

import outbox
from outbox import database
from outbox.cli import cli
from outbox.database import start_embedded
from outbox.testing import server_dsn, temporary_database


@pytest.fixture(scope="module")
def embedded_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("embedded") / "pgdata"


@pytest.fixture(scope="module")
def embedded(embedded_dir: Path) -> str:
    return start_embedded(embedded_dir)


def test_embedded_server_takes_migrations_and_enqueues(embedded: str) -> None:
    with temporary_database(embedded) as dsn:
        engine = outbox.database.create_engine(dsn, poolclass=sa.NullPool)
        with Session(engine) as session:
            handle = outbox.enqueue(session, "a.b", {"n": 1})
            session.commit()
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT uuid FROM outbox_jobs")).scalar_one() == handle.uuid
        engine.dispose()


def test_without_a_local_server_the_embedded_one_is_used(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(database, "LOCAL_SERVER", "postgresql://postgres@127.0.0.1:1/postgres")
    monkeypatch.delenv("OUTBOX_DSN", raising=False)
    dsn = server_dsn(outbox.Settings(embedded_dir=tmp_path / "pgdata"))
    assert str(tmp_path) in dsn.replace("%2F", "/")


def test_outbox_dsn_wins_over_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OUTBOX_DSN", "postgresql://someone@db.example/app")
    assert server_dsn() == "postgresql://someone@db.example/app"


def test_cli_without_dsn_or_local_server_uses_the_embedded_server_and_says_so(
    monkeypatch: pytest.MonkeyPatch, embedded: str, embedded_dir: Path
) -> None:
    monkeypatch.setattr(database, "LOCAL_SERVER", "postgresql://postgres@127.0.0.1:1/postgres")
    env = {"OUTBOX_DSN": None, "OUTBOX_EMBEDDED_DIR": str(embedded_dir)}
    migrated = CliRunner().invoke(cli, ["migrate"], env=env)
    assert migrated.exit_code == 0, migrated.output
    assert migrated.stderr.startswith(
        f"No OUTBOX_DSN: using database postgres on the embedded PostgreSQL in {embedded_dir} "
        "(none answered at 127.0.0.1:1)"
    )
    status = CliRunner().invoke(cli, ["status", "--json"], env=env)
    assert status.exit_code == 0, status.output
    assert '"queues": []' in status.stdout
