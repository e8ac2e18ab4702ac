"""The floors of claims (relay/floors.py): where each queue's claim starts, and when a claim
from the head comes instead."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from outbox_relay.floors import LOWEST, Floors

AT = (0, datetime(2026, 12, 5, 8, 0, tzinfo=UTC), 41)
LATER = (0, datetime(2026, 12, 5, 8, 1, tzinfo=UTC), 97)


def starts(params: dict[str, Any]) -> list[tuple[Any, ...]]:
    columns = params["floor_priority"], params["floor_run_at"], params["floor_id"]
    return list(zip(*columns, strict=True))


def test_without_floors_every_claim_starts_at_the_head() -> None:
    f = Floors()
    f.params(["a"], 0)
    f.advance({"a": AT})
    assert starts(f.params(["a", "b"], 0)) == [LOWEST, LOWEST]


def test_with_floors_a_queue_starts_past_its_last_claimed_job() -> None:
    f = Floors()
    f.turn(True)
    f.params(["a", "b"], 0)
    f.advance({"a": AT})
    assert starts(f.params(["a", "b"], 0)) == [AT, LOWEST]
    f.advance({"a": LATER, "b": AT})
    assert starts(f.params(["b", "a"], 0)) == [AT, LATER]


def test_a_job_finished_here_with_a_key_or_a_failure_makes_the_next_claim_start_at_the_head(
) -> None:  # fmt: skip
    f = Floors()
    f.turn(True)
    f.params(["a"], 5)
    f.advance({"a": AT})
    assert starts(f.params(["a"], 5)) == [AT]
    assert starts(f.params(["a"], 6)) == [LOWEST]  # a job may be ready behind the floor
    assert starts(f.params(["a"], 6)) == [AT]


def test_a_job_found_behind_a_floor_makes_the_next_claim_start_at_the_head() -> None:
    f = Floors()
    f.turn(True)
    f.advance({"a": AT})
    f.behind.set()
    assert starts(f.params(["a"], 0)) == [LOWEST]
    assert starts(f.params(["a"], 0)) == [AT]


def test_a_claim_from_the_head_that_took_jobs_behind_a_floor_leaves_it() -> None:
    f = Floors()
    f.turn(True)
    f.advance({"a": LATER})
    f.advance({"a": AT})
    assert starts(f.current(["a"])) == [LATER]


def test_floors_turned_off_and_on_again_start_afresh() -> None:
    f = Floors()
    f.turn(True)
    f.advance({"a": AT})
    f.turn(False)
    assert starts(f.current(["a"])) == [LOWEST]
    f.turn(True)
    assert starts(f.current(["a"])) == [LOWEST]
