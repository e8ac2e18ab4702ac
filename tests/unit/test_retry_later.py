"""outbox.RetryLater refuses a bad delay when it is built, with a message that says why."""

from __future__ import annotations

import pickle
from datetime import timedelta
from typing import Any

import pytest

import outbox


@pytest.mark.parametrize(
    ("delay", "seconds", "reason"),
    [
        (30, 30.0, "retry later requested: 30s"),
        (1.5, 1.5, "retry later requested: 1.5s"),
        (0, 0.0, "retry later requested: 0s"),
        (timedelta(minutes=2), 120.0, "retry later requested: 120s"),
        (timedelta(days=365), 31_536_000.0, "retry later requested: 31536000s"),
    ],
)
def test_a_delay_in_seconds_or_a_timedelta_is_kept_as_seconds(
    delay: float | timedelta, seconds: float, reason: str
) -> None:
    later = outbox.RetryLater(delay)
    assert later.seconds == seconds
    assert later.delay == timedelta(seconds=seconds)
    assert str(later) == reason
    assert str(later).startswith(outbox.RetryLater.REASON)
    assert isinstance(later, outbox.OutboxError)


@pytest.mark.parametrize(
    ("delay", "kind", "message"),
    [
        (-1, ValueError, "RetryLater delay must not be negative, not -1"),
        (timedelta(seconds=-1), ValueError, "RetryLater delay must not be negative"),
        (float("nan"), ValueError, "RetryLater delay must be a finite number of seconds, not nan"),
        (float("inf"), ValueError, "RetryLater delay must be a finite number of seconds, not inf"),
        (float("-inf"), ValueError, "must be a finite number of seconds"),
        (10**400, ValueError, "is over the most"),  # float() of it raised OverflowError
        (-(10**400), ValueError, "must not be negative"),
        (366 * 86_400, ValueError, "is over the most, 31536000s (365 days)"),
        (timedelta(days=400), ValueError, "enqueue a new job with run_at instead"),
        (True, TypeError, "must be seconds (an int or float) or a timedelta, not bool True"),
        ("30", TypeError, "must be seconds (an int or float) or a timedelta, not str '30'"),
        (None, TypeError, "not NoneType None"),
    ],
)
def test_a_bad_delay_is_refused_at_construction(delay: Any, kind: type, message: str) -> None:
    with pytest.raises(kind, match=r"^RetryLater delay") as raised:
        outbox.RetryLater(delay)
    assert message in str(raised.value)


def test_it_survives_pickling_for_handlers_run_in_other_processes() -> None:
    later = pickle.loads(pickle.dumps(outbox.RetryLater(2.5)))
    assert (type(later), later.seconds) == (outbox.RetryLater, 2.5)


def test_the_limit_and_the_longest_delay_are_documented_values() -> None:
    assert outbox.RetryLater.LIMIT == 100
    assert outbox.RetryLater.MAX_DELAY.days == 365
