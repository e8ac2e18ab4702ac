"""The shape every relay chore runs in (relay/service.py): passes at an interval, a pass
asked for sooner by nudge(), and a stop that ends the wait at once."""

from __future__ import annotations

import threading
import time

from outbox_relay.service import Service


class Counting(Service):
    name = "counting"

    def __init__(self, every: float, first_wait: float | None = None) -> None:
        super().__init__(every, first_wait=first_wait)
        self.passes: list[float] = []
        self.passed = threading.Event()

    def tick(self) -> float | None:
        self.passes.append(time.monotonic())
        self.passed.set()
        return None


def running(chore: Counting) -> threading.Thread:
    thread = threading.Thread(target=chore.run, daemon=True)
    thread.start()
    return thread


def test_a_nudge_brings_the_next_pass_forward() -> None:
    chore = Counting(every=30.0, first_wait=30.0)
    thread = running(chore)
    try:
        asked = time.monotonic()
        chore.nudge(0.05)
        assert chore.passed.wait(5), "no pass within 5 s of a nudge for 0.05 s"
        assert chore.passes[0] - asked >= 0.04
    finally:
        chore.stop()
        thread.join(5)
    assert not thread.is_alive()
    assert len(chore.passes) == 1


def test_a_nudged_pass_leaves_the_regular_passes_where_they_were() -> None:
    chore = Counting(every=0.4, first_wait=0.4)
    thread = running(chore)
    started = time.monotonic()
    try:
        chore.nudge(0.1)
        deadline = time.monotonic() + 5
        while len(chore.passes) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        chore.stop()
        thread.join(5)
    nudged, regular = chore.passes[:2]
    assert nudged - started < 0.3
    assert 0.35 < regular - started < 0.6  # at its interval from the start, not after the nudge


def test_a_nudge_for_later_than_the_next_pass_changes_nothing() -> None:
    chore = Counting(every=0.05, first_wait=0.05)
    thread = running(chore)
    try:
        chore.nudge(30.0)
        assert chore.passed.wait(5)
    finally:
        chore.stop()
        thread.join(5)
    assert not thread.is_alive()


def test_stop_ends_the_wait_at_once_even_after_a_nudge() -> None:
    chore = Counting(every=30.0, first_wait=30.0)
    thread = running(chore)
    chore.nudge(20.0)
    started = time.monotonic()
    chore.stop()
    thread.join(5)
    assert not thread.is_alive()
    assert time.monotonic() - started < 1
    assert chore.passes == []


def test_a_chore_with_attributes_of_the_same_names_still_stops_and_is_nudged() -> None:
    """The listener keeps the producer's wake-up event as ``_wake``: the loop's own state
    must not be taken for it (it was, and cleared the producer's wake-ups)."""

    class Named(Counting):
        def __init__(self) -> None:
            super().__init__(every=30.0, first_wait=30.0)
            self._wake = threading.Event()
            self._soon = 0.0
            self._nudged = threading.Event()

    chore = Named()
    thread = running(chore)
    try:
        chore.nudge(0.01)
        assert chore.passed.wait(5)
        assert not chore._wake.is_set()
    finally:
        chore.stop()
        thread.join(5)
    assert not thread.is_alive()
    assert not chore._wake.is_set()
