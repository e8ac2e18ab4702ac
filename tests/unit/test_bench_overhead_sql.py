"""bench.overhead_sql builds its pgbench scripts from enqueue.sql, and says what is missing."""

from __future__ import annotations

import re

import pytest

from bench import overhead_sql


def test_every_parameter_of_enqueue_one_gets_a_value() -> None:
    for name, script in overhead_sql.scripts().items():
        assert not re.search(r"(?<!:):\w+", script), name
        assert script.startswith("BEGIN;")
        assert script.endswith("COMMIT;\n")


def test_only_the_kinds_that_notify_call_pg_notify() -> None:
    kinds = overhead_sql.scripts()
    assert "pg_notify" in kinds["+ enqueue"]
    assert kinds[overhead_sql.RELAY_IDLE] == kinds["+ enqueue"]  # the mark makes the difference
    assert "pg_notify" in kinds["+ NOTIFY"]
    assert "pg_notify" not in kinds["+ job, no NOTIFY"]
    assert "2829, 6" not in kinds["+ job, no NOTIFY"]  # no look for an idle relay either
    assert "INSERT INTO outbox_jobs" in kinds["+ job, no NOTIFY"]
    for name in overhead_sql.NO_TRIGGER:
        assert "pg_notify" not in kinds[name]
        assert "INSERT INTO outbox_jobs" in kinds[name]


def test_the_trigger_is_off_only_for_the_kinds_that_say_so() -> None:
    kinds = overhead_sql.scripts()
    assert set(overhead_sql.NO_TRIGGER) < set(kinds)
    assert all("trigger" in name or "bare" in name for name in overhead_sql.NO_TRIGGER)
    assert overhead_sql.TRIGGER.format("DISABLE").endswith("DISABLE TRIGGER outbox_jobs_enqueued")


def test_without_pgbench_it_says_where_pgbench_comes_from(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(overhead_sql.shutil, "which", lambda name: None)
    monkeypatch.setattr(overhead_sql.glob, "glob", lambda pattern: [])
    with pytest.raises(SystemExit, match="pgbench is not installed"):
        overhead_sql.find_pgbench()


def test_refuses_a_round_count_below_one(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        overhead_sql.main(["--rounds", "0"])
    assert "must be 1 or more" in capsys.readouterr().err
