"""The one printed form of times and durations, and the one parser of ``--since``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import click
import pytest

from outbox.cli.terminal import Moment, plain_lines
from outbox.moments import duration, moment, parse_moment

NOW = datetime(2026, 12, 4, 14, 50, 14, 650714, tzinfo=UTC)


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (0.00001, "<0.1ms"),
        (0.00042, "0.4ms"),
        (0.0123, "12ms"),
        (1.234, "1.2s"),
        (59.94, "59.9s"),
        (59.96, "1m 0s"),
        (184, "3m 4s"),
        (7500, "2h 5m"),
        (3 * 86_400 + 4 * 3600 + 59, "3d 4h"),
        (None, ""),
    ],
)
def test_durations_are_rounded_for_people(seconds: float | None, shown: str) -> None:
    assert duration(seconds) == shown


def test_a_time_prints_in_utc_to_the_second_with_z() -> None:
    assert moment(NOW) == "2026-12-04T14:50:14Z"
    assert moment(NOW.astimezone(timezone(timedelta(hours=2)))) == "2026-12-04T14:50:14Z"
    assert moment(NOW.replace(tzinfo=None)) == "2026-12-04T14:50:14Z"
    assert moment(None) == ""


@pytest.mark.parametrize(
    ("text", "meant"),
    [
        ("2026-12-04T14:50:14Z", datetime(2026, 12, 4, 14, 50, 14, tzinfo=UTC)),
        ("2026-12-04T14:50:14", datetime(2026, 12, 4, 14, 50, 14, tzinfo=UTC)),
        ("2026-12-04", datetime(2026, 12, 4, tzinfo=UTC)),
        ("2026-12-04 14:50:14.650714+00:00", NOW),
        ("2026-12-04T15:50:14+01:00", datetime(2026, 12, 4, 14, 50, 14, tzinfo=UTC)),
        ("2026-12-04T15:50+0100", datetime(2026, 12, 4, 14, 50, tzinfo=UTC)),
        ("90s", NOW - timedelta(seconds=90)),
        ("30m", NOW - timedelta(minutes=30)),
        ("1h", NOW - timedelta(hours=1)),
        ("2d", NOW - timedelta(days=2)),
        ("1w", NOW - timedelta(days=7)),
        ("1.5h", NOW - timedelta(minutes=90)),
    ],
)
def test_since_reads_printed_times_and_times_ago(text: str, meant: datetime) -> None:
    assert parse_moment(text, now=NOW) == meant


def test_every_printed_time_reads_back_as_itself_to_the_second() -> None:
    assert parse_moment(moment(NOW)) == NOW.replace(microsecond=0)


@pytest.mark.parametrize("text", ["yesterday", "1 hour", "-1h", "1y", "2026-13-01", "", "h"])
def test_anything_else_is_refused_saying_what_is_accepted(text: str) -> None:
    with pytest.raises(ValueError, match="is not a time: write one as the commands print it"):
        parse_moment(text, now=NOW)


def test_the_option_type_reports_a_bad_time_as_a_usage_error() -> None:
    with pytest.raises(click.BadParameter, match="90s, 30m, 1h, 2d"):
        Moment().convert("soon", None, None)


def test_a_traceback_keeps_its_lines_and_escapes_what_is_in_them() -> None:
    assert plain_lines("Traceback:\n  x\x1b[31m\r\n") == ["Traceback:", "  x\\x1b[31m\\r"]


def test_parse_moment_refuses_a_time_ago_further_than_any_time_with_a_value_error() -> None:
    with pytest.raises(ValueError, match="further back than any time can be"):
        parse_moment("99999999999d")
