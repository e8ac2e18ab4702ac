"""The floors of claims (relay/floors.py): where each queue's claim starts, and when a full
claim, from the head, comes instead."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from outbox_relay import floors
from outbox_relay.floors import LOWEST, Floors

AT = (0, datetime(2026, 12, 5, 8, 0, tzinfo=UTC), 41)
LATER = (0, datetime(2026, 12, 5, 8, 1, tzinfo=UTC), 97)


def starts(params: dict[str, list[object]]) -> list[tuple[object, ...]]:
    columns = params["floor_priority"], params["floor_run_at"], params["floor_id"]
    return list(zip(*columns, strict=True))


def test_without_floors_every_claim_starts_at_the_head() -> None:
    f = Floors()
    f.params(["a"], 0)
    f.advance({"a": AT})
    assert starts(f.params(["a", "b"], 0)) == [LOWEST, LOWEST]


def test_with_floors_a_queue_starts_past_its_last_claimed_job() -> None:
    f = Floors()
    f.active = True
    assert starts(f.params(["a", "b"], 0)) == [LOWEST, LOWEST]  # the first claim is full
    f.advance({"a": AT})
    assert starts(f.params(["a", "b"], 0)) == [AT, LOWEST]
    f.advance({"a": LATER, "b": AT})
    assert starts(f.params(["b", "a"], 0)) == [AT, LATER]


def test_a_job_finished_here_with_a_key_or_a_failure_makes_the_next_claim_full() -> None:
    f = Floors()
    f.active = True
    f.params(["a"], 5)
    f.advance({"a": AT})
    assert starts(f.params(["a"], 5)) == [AT]
    assert starts(f.params(["a"], 6)) == [LOWEST]  # a job may be ready behind the floor
    f.advance({"a": LATER})
    assert starts(f.params(["a"], 6)) == [LATER]


def test_a_full_claim_comes_every_full_scan_period(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(floors, "FULL_SCAN_EVERY", 0.0)
    f = Floors()
    f.active = True
    f.params(["a"], 0)
    f.advance({"a": AT})
    assert starts(f.params(["a"], 0)) == [LOWEST]


def test_an_idle_relay_waits_no_longer_than_the_next_full_claim() -> None:
    f = Floors()
    assert f.wait(60.0) == 60.0
    f.active = True
    f.params(["a"], 0)
    assert 0.0 <= f.wait(60.0) <= floors.FULL_SCAN_EVERY
    assert f.wait(0.01) == 0.01
