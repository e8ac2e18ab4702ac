"""The live-job table is vacuumed by a relay when dead rows pile up and autovacuum has not."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from outbox_relay import upkeep
from sqlalchemy.orm import Session

import outbox
from outbox.database import create_engine
from tests.integration.relay_harness import scalar
from tests.integration.test_append_only import as_role, login_role


def pile_up_dead_rows(db: sa.Engine, count: int) -> None:
    with Session(db) as session:
        outbox.enqueue_many(session, [outbox.NewJob("a.b", {})] * count)
        session.commit()
    with db.begin() as conn:
        conn.execute(sa.text("SET LOCAL session_replication_role = replica"))
        conn.execute(sa.text("DELETE FROM outbox_jobs"))
        conn.execute(sa.text("SELECT pg_stat_force_next_flush()"))


def looks_and_vacuums(engine: sa.Engine) -> bool:
    """One look at the table by a relay that took the upkeep lock; True if it vacuumed."""
    keeper = upkeep.Upkeep(engine)
    assert keeper._leadership.take() is not None
    try:
        return keeper.look()
    finally:
        keeper._leadership.resign()


def vacuums(db: sa.Engine) -> int:
    with db.connect() as conn:
        conn.execute(sa.text("SELECT pg_stat_clear_snapshot()"))
        return int(conn.execute(sa.text(
            "SELECT vacuum_count FROM pg_stat_user_tables WHERE relname = 'outbox_jobs'"
        )).scalar_one())  # fmt: skip


def test_dead_rows_past_the_threshold_are_vacuumed(
    db: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(upkeep, "DEAD_ROWS", 500)
    monkeypatch.setattr(upkeep, "MIN_DEAD_ROWS", 500)
    monkeypatch.setattr(upkeep, "QUIET", 0.0)
    pile_up_dead_rows(db, 1000)
    before = vacuums(db)
    assert looks_and_vacuums(db)
    assert vacuums(db) == before + 1
    assert scalar(db, "SELECT count(*) FROM outbox_jobs") == 0


def test_few_dead_rows_are_left_to_autovacuum(
    db: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(upkeep, "DEAD_ROWS", 1_000_000)
    monkeypatch.setattr(upkeep, "DEAD_RATIO", 1_000_000)
    pile_up_dead_rows(db, 100)
    assert not looks_and_vacuums(db)


def test_a_small_table_in_a_steady_state_is_not_vacuumed_at_the_defaults(db: sa.Engine) -> None:
    # A few thousand jobs done, none waiting: dead rows are many times the live ones, and
    # still far too few to slow a claim.
    pile_up_dead_rows(db, 3000)
    assert not looks_and_vacuums(db)


def test_no_vacuum_follows_another_within_the_quiet_period(
    db: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(upkeep, "DEAD_ROWS", 500)
    monkeypatch.setattr(upkeep, "MIN_DEAD_ROWS", 500)
    pile_up_dead_rows(db, 1000)
    with db.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM outbox_jobs"))
    pile_up_dead_rows(db, 1000)
    assert not looks_and_vacuums(db)


def test_a_relay_that_may_not_vacuum_says_so_and_stops_trying(
    db: sa.Engine, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(upkeep, "DEAD_ROWS", 500)
    monkeypatch.setattr(upkeep, "MIN_DEAD_ROWS", 500)
    monkeypatch.setattr(upkeep, "QUIET", 0.0)
    pile_up_dead_rows(db, 1000)
    for writer in login_role(db, "outbox_writer"):
        engine = create_engine(as_role(dsn, writer), poolclass=sa.NullPool)
        keeper = upkeep.Upkeep(engine)
        try:
            assert keeper._leadership.take() is not None
            assert not keeper.look()
            assert not keeper._allowed
        finally:
            keeper._leadership.resign()
            engine.dispose()


def test_one_relay_at_a_time_looks_after_the_table(db: sa.Engine) -> None:
    first, second = upkeep.Upkeep(db), upkeep.Upkeep(db)
    try:
        assert first._leadership.take() is not None
        assert second._leadership.take() is None
    finally:
        first._leadership.resign()
    assert second._leadership.take() is not None
    second._leadership.resign()
