"""The embedded server: what the README's commands use where no server answers."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

import outbox
from outbox import testing
from outbox.database import start_embedded
from outbox.testing import server_dsn, temporary_database


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> str:
    return start_embedded(tmp_path_factory.mktemp("embedded") / "pgdata")


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
    monkeypatch.setattr(testing, "LOCAL_SERVER", "postgresql://postgres@127.0.0.1:1/postgres")
    monkeypatch.delenv("OUTBOX_DSN", raising=False)
    dsn = server_dsn(outbox.Settings(embedded_dir=tmp_path / "pgdata"))
    assert str(tmp_path) in dsn.replace("%2F", "/")


def test_outbox_dsn_wins_over_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OUTBOX_DSN", "postgresql://someone@db.example/app")
    assert server_dsn() == "postgresql://someone@db.example/app"
