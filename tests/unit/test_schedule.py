"""Schedules: a bad declaration is refused when made; ticks, time zones and catch-up."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from outbox import Registry, RegistryError
from outbox.schedule import CATCH_UP_MAX, GRACE, Schedule, idempotency_key, tick_of

PARIS = "Europe/Paris"
PARIS_TZ = ZoneInfo(PARIS)


def at(text: str) -> datetime:
    """An instant written in UTC: ``"2026-03-29 00:30"``."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "give cron"),
        ({"cron": "* * * * *", "every": timedelta(minutes=1)}, "exactly one of them"),
        ({"cron": "61 * * * *"}, "cron '61 * * * *': Bad minute"),
        ({"cron": "* * * *"}, "must have five fields"),
        ({"cron": "0 0 * * * *"}, "must have five fields"),
        ({"cron": "@fortnightly"}, "must have five fields"),
        ({"cron": "0 0 31 2 *"}, "Bad day-of-month"),
        ({"cron": 5}, "cron must be a str, not int"),
        ({"every": timedelta(0)}, "every must be positive"),
        ({"every": timedelta(seconds=-5)}, "every must be positive"),
        ({"every": timedelta(seconds=1.5)}, "whole number of seconds"),
        ({"every": timedelta(milliseconds=500)}, "whole number of seconds"),
        ({"every": 60}, "every must be a timedelta, not int"),
        ({"every": timedelta(hours=1), "timezone": PARIS}, "timezone applies to cron"),
        ({"cron": "0 9 * * *", "timezone": "Europe/Atlantis"}, "unknown timezone"),
        ({"cron": "0 9 * * *", "timezone": "../etc/passwd"}, "unknown timezone"),
        ({"cron": "0 9 * * *", "timezone": ""}, "unknown timezone"),
        ({"cron": "0 9 * * *", "payload": {"at": datetime.now(UTC)}}, "payload is not JSON"),
        ({"cron": "0 9 * * *", "payload": {1: "x"}}, "JSON object keys must be str"),
        ({"cron": "0 9 * * *", "payload": [1, 2]}, "payload must be a JSON object"),
        ({"cron": "0 9 * * *", "payload": {"x": float("nan")}}, "payload is not JSON"),
        ({"cron": "0 9 * * *", "queue": "no spaces"}, "job queue 'no spaces' may hold only"),
        ({"cron": "0 9 * * *", "key": "  "}, "key must not be empty"),
        ({"cron": "0 9 * * *", "catch_up": "some"}, "catch_up must be one of"),
    ],
)
def test_bad_declaration_is_refused_with_what_is_wrong(
    options: dict[str, Any], message: str
) -> None:
    registry = Registry()
    with pytest.raises(RegistryError, match="^schedule 'nightly': .*" + re.escape(message)):
        registry.schedule("nightly", "report.build", **options)
    assert registry.schedules == []


@pytest.mark.parametrize("name", ["", "has space", "-leading", "x" * 129, "new\nline"])
def test_bad_schedule_name_is_refused(name: str) -> None:
    with pytest.raises(RegistryError, match=r"schedule name .* must be 1 to 128"):
        Registry().schedule(name, "report.build", cron="0 9 * * *")


def test_bad_job_type_is_refused() -> None:
    with pytest.raises(RegistryError, match="schedule 'nightly': job type 'bad type'"):
        Registry().schedule("nightly", "bad type", cron="0 9 * * *")


def test_a_name_is_declared_once() -> None:
    registry = Registry()
    registry.schedule("nightly", "report.build", cron="0 3 * * *")
    with pytest.raises(RegistryError, match="'nightly' is already declared"):
        registry.schedule("nightly", "report.other", cron="0 4 * * *")
    assert [s.type for s in registry.schedules] == ["report.build"]


def test_declared_schedules_are_kept_in_order_with_their_options() -> None:
    registry = Registry()
    first = registry.schedule(
        "nightly", "report.build", cron="0 3 * * *", payload={"full": True}, queue="reports",
        key="reports", timezone=PARIS, catch_up="none",
    )  # fmt: skip
    second = registry.schedule("pulse", "health.ping", every=timedelta(seconds=30))
    assert registry.schedules == [first, second]
    assert (first.spec, first.timezone, first.queue, first.key) == (
        "0 3 * * *", PARIS, "reports", "reports",
    )  # fmt: skip
    assert first.payload == {"full": True}
    assert first.catch_up == "none"
    assert second.spec == "every 30s"
    assert second.payload == {}
    assert second.catch_up == "latest"


def test_payload_is_copied_when_declared() -> None:
    payload = {"items": [1]}
    declared = Schedule("nightly", "report.build", cron="0 3 * * *", payload=payload)
    payload["items"].append(2)
    assert declared.payload == {"items": [1]}
    assert declared.payload_json == '{"items":[1]}'


@pytest.mark.parametrize(
    ("every", "spec"),
    [
        (timedelta(seconds=1), "every 1s"),
        (timedelta(minutes=90), "every 1h30m"),
        (timedelta(days=1, seconds=5), "every 1d5s"),
    ],
)
def test_interval_is_shown_as_a_duration(every: timedelta, spec: str) -> None:
    assert Schedule("s", "t", every=every).spec == spec


def test_cron_nicknames_stand_for_their_fields() -> None:
    daily = Schedule("s", "t", cron="@daily")
    assert daily.spec == "@daily"
    assert daily.next_after(at("2026-05-01 13:00")) == at("2026-05-02 00:00")


def test_next_cron_tick_is_strictly_after_the_instant() -> None:
    every_five = Schedule("s", "t", cron="*/5 * * * *")
    assert every_five.next_after(at("2026-05-01 13:02:10")) == at("2026-05-01 13:05")
    assert every_five.next_after(at("2026-05-01 13:05")) == at("2026-05-01 13:10")
    assert every_five.next_after(at("2026-05-01 13:04:59.999999")) == at("2026-05-01 13:05")


def test_interval_ticks_fall_on_multiples_of_the_interval() -> None:
    hourly = Schedule("s", "t", every=timedelta(hours=1))
    assert hourly.next_after(at("2026-05-01 13:20")) == at("2026-05-01 14:00")
    assert hourly.next_after(at("2026-05-01 14:00")) == at("2026-05-01 15:00")
    second = Schedule("s", "t", every=timedelta(seconds=1))
    assert second.next_after(at("2026-05-01 13:20:07.25")) == at("2026-05-01 13:20:08")


def test_ticks_come_back_in_utc_from_any_time_zone() -> None:
    hourly = Schedule("s", "t", every=timedelta(hours=1))
    local = at("2026-05-01 13:20").astimezone(PARIS_TZ)
    assert hourly.next_after(local) == at("2026-05-01 14:00")
    assert hourly.next_after(local).tzinfo is UTC


def test_naive_instant_is_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        Schedule("s", "t", every=timedelta(hours=1)).next_after(datetime(2026, 5, 1))


def test_local_time_of_day_follows_the_time_zone_across_the_summer_change() -> None:
    nine = Schedule("s", "t", cron="0 9 * * *", timezone=PARIS)
    # Paris is UTC+1 in winter, UTC+2 from 29 March 2026.
    assert nine.next_after(at("2026-03-27 12:00")) == at("2026-03-28 08:00")
    assert nine.next_after(at("2026-03-28 12:00")) == at("2026-03-29 07:00")


def test_a_local_time_skipped_by_the_summer_change_runs_once_just_after_it() -> None:
    # 02:30 does not exist in Paris on 29 March 2026 (02:00 becomes 03:00): cron runs the
    # job at 03:00 local (01:00 UTC), once.
    half_past_two = Schedule("s", "t", cron="30 2 * * *", timezone=PARIS)
    ticks = _ticks(half_past_two, at("2026-03-27 12:00"), 3)
    assert ticks == [at("2026-03-28 01:30"), at("2026-03-29 01:00"), at("2026-03-30 00:30")]


def test_a_local_time_repeated_by_the_winter_change_runs_once() -> None:
    # 02:30 comes twice in Paris on 25 October 2026 (03:00 goes back to 02:00): once it is.
    half_past_two = Schedule("s", "t", cron="30 2 * * *", timezone=PARIS)
    ticks = _ticks(half_past_two, at("2026-10-24 12:00"), 3)
    assert ticks == [at("2026-10-25 00:30"), at("2026-10-26 01:30"), at("2026-10-27 01:30")]
    # Asked from inside the repeated hour, after the first 02:30: the next day's.
    assert half_past_two.next_after(at("2026-10-25 01:10")) == at("2026-10-26 01:30")


def test_hourly_cron_keeps_every_real_hour_across_the_winter_change() -> None:
    hourly = Schedule("s", "t", cron="0 * * * *", timezone=PARIS)
    ticks = _ticks(hourly, at("2026-10-24 23:30"), 4)
    assert ticks == [at("2026-10-25 00:00"), at("2026-10-25 01:00"),
                     at("2026-10-25 02:00"), at("2026-10-25 03:00")]  # fmt: skip


def test_ticks_back_agree_with_ticks_forward() -> None:
    for schedule in (
        Schedule("s", "t", cron="30 2 * * *", timezone=PARIS),
        Schedule("s", "t", cron="*/20 * * * *", timezone=PARIS),
        Schedule("s", "t", every=timedelta(minutes=7)),
    ):
        forward = _ticks(schedule, at("2026-10-23 00:00"), 12)
        back = schedule.ticks_back(forward[-1])
        assert [next(back) for _ in forward] == forward[::-1]


# -- what a relay enqueues ---------------------------------------------------------------


def test_one_tick_due_on_time_is_enqueued() -> None:
    minutely = Schedule("s", "t", cron="* * * * *")
    due = minutely.due(at("2026-05-01 13:20"), at("2026-05-01 13:20:00.3"))
    assert due.ticks == (at("2026-05-01 13:20"),)
    assert due.next_tick == at("2026-05-01 13:21")
    assert not due.skipped


def test_nothing_is_due_before_the_next_tick() -> None:
    minutely = Schedule("s", "t", cron="* * * * *")
    due = minutely.due(at("2026-05-01 13:21"), at("2026-05-01 13:20:30"))
    assert due.ticks == ()
    assert due.next_tick == at("2026-05-01 13:21")


def test_ticks_a_little_late_are_each_enqueued_whatever_the_policy() -> None:
    for policy in ("latest", "none", "all"):
        second = Schedule("s", "t", every=timedelta(seconds=1), catch_up=policy)  # type: ignore[arg-type]
        due = second.due(at("2026-05-01 13:20:00"), at("2026-05-01 13:20:03.5"))
        assert due.ticks == tuple(at(f"2026-05-01 13:20:0{n}") for n in range(4)), policy
        assert not due.skipped


def test_missed_ticks_are_caught_up_once_with_the_latest() -> None:
    hourly = Schedule("s", "t", cron="0 * * * *")
    due = hourly.due(at("2026-05-01 08:00"), at("2026-05-01 13:20"))
    assert due.ticks == (at("2026-05-01 13:00"),)
    assert due.next_tick == at("2026-05-01 14:00")
    assert due.skipped


def test_missed_ticks_are_skipped_with_none() -> None:
    hourly = Schedule("s", "t", cron="0 * * * *", catch_up="none")
    due = hourly.due(at("2026-05-01 08:00"), at("2026-05-01 13:20"))
    assert due.ticks == ()
    assert due.skipped
    assert due.next_tick == at("2026-05-01 14:00")


def test_missed_ticks_are_each_enqueued_with_all() -> None:
    hourly = Schedule("s", "t", cron="0 * * * *", catch_up="all")
    due = hourly.due(at("2026-05-01 08:00"), at("2026-05-01 13:20"))
    assert due.ticks == tuple(at(f"2026-05-01 {h:02}:00") for h in range(8, 14))
    assert not due.skipped


def test_all_catches_up_at_most_the_latest_hundred() -> None:
    minutely = Schedule("s", "t", every=timedelta(minutes=1), catch_up="all")
    due = minutely.due(at("2026-05-01 00:00"), at("2026-05-01 13:20:30"))
    assert len(due.ticks) == CATCH_UP_MAX
    assert due.skipped
    assert due.ticks[-1] == at("2026-05-01 13:20")
    assert due.ticks[0] == at("2026-05-01 13:20") - (CATCH_UP_MAX - 1) * timedelta(minutes=1)


def test_latest_catch_up_comes_with_the_ticks_due_now() -> None:
    # A relay back after an hour finds a one-second schedule: one job for the ticks it
    # missed, and each tick of the last GRACE, which a slow relay would have run too.
    second = Schedule("s", "t", every=timedelta(seconds=1))
    now = at("2026-05-01 13:20:00.5")
    due = second.due(now - timedelta(hours=1), now)
    grace = int(GRACE.total_seconds())
    assert len(due.ticks) == grace + 1
    assert due.skipped
    assert due.ticks[0] == at("2026-05-01 13:19:50")  # the latest missed tick
    assert due.ticks[1:] == tuple(now.replace(microsecond=0) - timedelta(seconds=s)
                                  for s in range(grace - 1, -1, -1))  # fmt: skip


def test_a_long_outage_costs_no_walk_through_every_missed_tick() -> None:
    second = Schedule("s", "t", every=timedelta(seconds=1))
    minutely = Schedule("m", "t", cron="* * * * *")
    now = at("2026-05-01 13:20:30")
    for schedule in (second, minutely):
        due = schedule.due(now - timedelta(days=3650), now)  # ten years: answered at once
        assert due.skipped


def test_idempotency_key_names_the_schedule_and_the_tick_in_utc() -> None:
    local = at("2026-05-01 07:00").astimezone(PARIS_TZ)
    assert idempotency_key("nightly", local) == "schedule:nightly:2026-05-01T07:00:00+00:00"


def _ticks(schedule: Schedule, after: datetime, count: int) -> list[datetime]:
    ticks = []
    for _ in range(count):
        after = schedule.next_after(after)
        ticks.append(after)
    return ticks


def test_the_tick_is_read_back_from_the_idempotency_key() -> None:
    tick = at("2026-05-01 07:00")
    assert tick_of(idempotency_key("odd:name:with:colons", tick)) == tick
    assert tick_of(idempotency_key("nightly", tick)) == tick


@pytest.mark.parametrize(
    "key",
    [None, "", "order:7", "schedule:", "schedule:x:2026-05-01T07:00:00+02:00",
     "schedule:x:not a time at all, really", "other:x:2026-05-01T07:00:00+00:00"],
)  # fmt: skip
def test_a_key_no_schedule_made_names_no_tick(key: str | None) -> None:
    assert tick_of(key) is None
