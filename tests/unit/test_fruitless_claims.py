"""After a claim that found nothing but took long (it read past many jobs of types the relay
cannot run), the relay rests before claiming again, so that notifications of such jobs do not
keep a database backend busy; a quick empty claim costs no rest (latency stays as it was)."""

from __future__ import annotations

import pytest
from outbox_relay.claim import FRUITLESS_SLOW, fruitless_pause


@pytest.mark.parametrize("seconds", [0.0, 0.0005, FRUITLESS_SLOW / 2])
def test_a_quick_empty_claim_is_followed_by_no_rest(seconds: float) -> None:
    assert fruitless_pause(seconds) == 0.0


@pytest.mark.parametrize(("seconds", "rest"), [(0.005, 0.02), (0.02, 0.08), (0.2, 0.8)])
def test_a_slow_empty_claim_is_followed_by_a_rest_four_times_as_long(
    seconds: float, rest: float
) -> None:
    assert fruitless_pause(seconds) == pytest.approx(rest)
    assert seconds / (seconds + fruitless_pause(seconds)) == pytest.approx(0.2)


def test_the_rest_is_at_most_a_second() -> None:
    assert fruitless_pause(5.0) == 1.0
