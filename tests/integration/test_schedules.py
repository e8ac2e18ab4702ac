"""Periodic jobs with real relays: each tick enqueued once however many relays run, missed
ticks caught up as declared, and schedules visible in status and metrics."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import prometheus_client
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from outbox_relay import scheduler
from outbox_relay.scheduler import declare, enqueue_due
from structlog.testing import capture_logs

import outbox
from outbox.cli import cli
from outbox.moments import moment
from outbox.schedule import Schedule
from tests.integration.relay_harness import running_relay, scalar, wait_for


@pytest.fixture
def schedules(db: sa.Engine) -> Iterator[sa.Engine]:
    """The ``db`` engine with no schedule rows before and after the test."""
    forget_schedules(db)
    yield db
    forget_schedules(db)


def forget_schedules(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM outbox_schedules"))


def now(engine: sa.Engine) -> datetime:
    moment: datetime = scalar(engine, "SELECT clock_timestamp()")
    return moment


def row(engine: sa.Engine, name: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(
            sa.text("SELECT * FROM outbox_schedules WHERE name = :name"), {"name": name}
        ).first()


def tick_keys(engine: sa.Engine, name: str) -> list[str]:
    """The idempotency keys of the ticks enqueued, one per job ever enqueued for them."""
    with engine.connect() as conn:
        return list(
            conn.execute(
                sa.text(
                    "SELECT i.idempotency_key FROM outbox_history AS h "
                    "JOIN outbox_idempotency AS i ON i.job_uuid = h.job_uuid "
                    "WHERE h.event = 'enqueued' AND i.idempotency_key LIKE :prefix "
                    "ORDER BY i.idempotency_key"
                ),
                {"prefix": f"schedule:{name}:%"},
            ).scalars()
        )


def tick_of(key: str) -> datetime:
    return datetime.fromisoformat(key.split(":", 2)[2])


def a_minute_away_from(moment: datetime) -> int:
    """A minute of the hour half an hour from ``moment``: a cron at that minute has its
    latest tick half an hour ago, far from the grace of an on-time tick."""
    return (moment.minute + 30) % 60


def test_three_relays_enqueue_each_tick_of_a_one_second_schedule_once(
    schedules: sa.Engine, dsn: str
) -> None:
    seen: list[str] = []
    lock = threading.Lock()
    registry = outbox.Registry()

    @registry.handler("beat.tick")
    def beat(job: outbox.Job) -> None:
        with lock:
            seen.append(str(job.idempotency_key))

    registry.schedule("beat", "beat.tick", every=timedelta(seconds=1), payload={"n": 1})
    declared_at = now(schedules)
    with contextlib.ExitStack() as relays:
        for _ in range(3):
            relays.enter_context(running_relay(registry, dsn))
        wait_for(lambda: len(tick_keys(schedules, "beat")) >= 4, 20, "four ticks")
    keys = tick_keys(schedules, "beat")
    ticks = [tick_of(k) for k in keys]
    assert len(set(keys)) == len(keys), "a tick was enqueued twice"
    # Every tick from the first to the last, one second apart, and none from before the
    # schedule was first declared.
    assert ticks == [ticks[0] + timedelta(seconds=n) for n in range(len(ticks))]
    assert ticks[0] > declared_at
    state = row(schedules, "beat")
    assert state.last_tick == ticks[-1]
    assert state.next_tick == ticks[-1] + timedelta(seconds=1)
    assert state.spec == "every 1s"
    # The history holds one enqueued row per tick for the type: nothing reached the queue
    # that the idempotency key, the second guard, had to turn away.
    enqueued = scalar(
        schedules,
        "SELECT count(*) FROM outbox_history WHERE type = 'beat.tick' AND event = 'enqueued'",
    )
    assert enqueued == len(keys)
    assert set(seen) <= set(keys)
    payloads = scalar(
        schedules,
        "SELECT count(*) FROM outbox_history WHERE type = 'beat.tick' AND payload <> '{\"n\": 1}'",
    )
    assert payloads == 0


def test_a_tick_read_by_two_relays_is_taken_by_one(schedules: sa.Engine) -> None:
    schedule = Schedule("race", "race.tick", every=timedelta(seconds=1))
    start = now(schedules)
    with schedules.begin() as conn:
        declare(conn, schedule, start - timedelta(seconds=5))
    due_from = row(schedules, "race").next_tick
    due = schedule.due(due_from, now(schedules))
    settings = outbox.Settings()
    taken = []
    for relay in ("first", "second"):  # both read the same row before either wrote it
        with schedules.begin() as conn:
            taken.append(
                enqueue_due(
                    conn, schedule, due_from, due, relay=relay, registry=None, settings=settings
                )
            )
    assert taken[0] is not None
    assert len(taken[0]) == len(due.ticks)
    assert taken[1] is None
    assert len(tick_keys(schedules, "race")) == len(due.ticks)
    assert row(schedules, "race").relay == "first"


def test_a_first_declaration_waits_for_its_next_tick(schedules: sa.Engine, dsn: str) -> None:
    start = now(schedules)
    minute = a_minute_away_from(start)
    registry = outbox.Registry()
    registry.handler("report.build")(lambda job: None)
    registry.schedule("report", "report.build", cron=f"{minute} * * * *")
    with running_relay(registry, dsn):
        state = wait_for(lambda: row(schedules, "report"), 10, "the schedule's row")
    assert state.last_tick is None
    assert state.next_tick > start
    assert state.next_tick.minute == minute
    assert tick_keys(schedules, "report") == []


@pytest.mark.parametrize(("catch_up", "jobs"), [("latest", 1), ("none", 0), ("all", 6)])
def test_ticks_missed_while_no_relay_ran_are_caught_up_as_declared(
    schedules: sa.Engine, dsn: str, catch_up: str, jobs: int
) -> None:
    start = now(schedules)
    minute = a_minute_away_from(start)
    registry = outbox.Registry()
    registry.handler("report.build")(lambda job: None)
    declared = registry.schedule(
        "report",
        "report.build",
        cron=f"{minute} * * * *",
        catch_up=catch_up,  # type: ignore[arg-type]
    )
    latest_missed = next(declared.ticks_back(start))
    six_hours_ago = latest_missed - timedelta(hours=5)
    # The relays last ran six hours ago: the row waits for a tick long past.
    with schedules.begin() as conn:
        declare(conn, declared, start)
        conn.execute(
            sa.text(
                "UPDATE outbox_schedules SET next_tick = :next, last_tick = :last "
                "WHERE name = 'report'"
            ),
            {"next": six_hours_ago, "last": six_hours_ago - timedelta(hours=1)},
        )
    with running_relay(registry, dsn):
        state = wait_for(
            lambda: (r := row(schedules, "report")).next_tick > start and r,
            10, "the missed ticks to be handled",
        )  # fmt: skip
    ticks = [tick_of(k) for k in tick_keys(schedules, "report")]
    assert len(ticks) == jobs
    if catch_up == "latest":
        assert ticks == [latest_missed]
    if catch_up == "all":
        assert ticks == [six_hours_ago + timedelta(hours=h) for h in range(6)]
    assert state.next_tick == declared.next_after(start)
    assert state.last_tick == (ticks[-1] if ticks else six_hours_ago - timedelta(hours=1))


def test_a_changed_declaration_updates_the_row_and_its_next_tick(
    schedules: sa.Engine, dsn: str
) -> None:
    old = Schedule("report", "report.build", cron="0 3 * * *", payload={"v": 1})
    start = now(schedules)
    with schedules.begin() as conn:
        declare(conn, old, start)
    minute = a_minute_away_from(start)
    registry = outbox.Registry()
    registry.handler("report.build")(lambda job: None)
    new = registry.schedule(
        "report", "report.build", cron=f"{minute} * * * *", payload={"v": 2}, queue="reports"
    )
    with running_relay(registry, dsn):
        state = wait_for(
            lambda: (r := row(schedules, "report")).spec == new.spec and r, 10, "the new spec"
        )
    assert state.payload == {"v": 2}
    assert state.queue == "reports"
    assert state.next_tick == new.next_after(start)


def test_status_and_its_json_show_schedules(schedules: sa.Engine, dsn: str) -> None:
    registry = outbox.Registry()
    registry.handler("beat.tick")(lambda job: None)
    registry.schedule("beat", "beat.tick", every=timedelta(seconds=1))
    registry.schedule("nightly", "report.build", cron="0 3 * * *", timezone="Europe/Paris")
    with running_relay(registry, dsn, metrics_addr=None):
        wait_for(lambda: tick_keys(schedules, "beat"), 10, "a tick")
        gauge = prometheus_client.REGISTRY.get_sample_value(
            "outbox_schedule_next_tick_timestamp_seconds", {"schedule": "nightly"}
        )
    # After the relay stopped: its log lines would land in the output read here.
    result = CliRunner().invoke(cli, ["--dsn", dsn, "status", "--json"])
    table = CliRunner(env={"COLUMNS": "80"}).invoke(cli, ["--dsn", dsn, "status"])
    wide = CliRunner(env={"COLUMNS": "160"}).invoke(cli, ["--dsn", dsn, "status"])
    assert result.exit_code == 0, result.output
    shown = {s["name"]: s for s in json.loads(result.output)["schedules"]}
    assert set(shown) == {"beat", "nightly"}
    beat, nightly = shown["beat"], shown["nightly"]
    assert (beat["type"], beat["spec"], beat["timezone"]) == ("beat.tick", "every 1s", "UTC")
    assert datetime.fromisoformat(beat["last_tick"]) < datetime.fromisoformat(beat["next_tick"])
    assert beat["last_job_uuid"] is not None
    assert (nightly["spec"], nightly["timezone"], nightly["last_tick"]) == (
        "0 3 * * *", "Europe/Paris", None,
    )  # fmt: skip
    next_nightly = datetime.fromisoformat(nightly["next_tick"])
    assert next_nightly.astimezone(ZoneInfo("Europe/Paris")).hour == 3
    assert gauge == next_nightly.timestamp()
    assert table.exit_code == 0, table.output
    assert "schedules" in table.output
    assert max(len(line) for line in table.output.splitlines()) <= 80
    [line] = [line for line in wide.output.splitlines() if line.startswith("nightly ")]
    assert line.split() == [
        "nightly", "report.build", "0", "3", "*", "*", "*", "-", moment(next_nightly),
    ]  # fmt: skip
    assert "Europe/Paris" in wide.output


def test_a_schedule_no_relay_runs_shows_overdue(schedules: sa.Engine, dsn: str) -> None:
    gone = Schedule("gone", "old.job", every=timedelta(minutes=1))
    with schedules.begin() as conn:
        declare(conn, gone, now(schedules) - timedelta(hours=1))  # its code was removed
    result = CliRunner().invoke(cli, ["--dsn", dsn, "status", "--json"])
    [state] = json.loads(result.output)["schedules"]
    assert state["overdue_seconds"] > 3000
    table = CliRunner(env={"COLUMNS": "80"}).invoke(cli, ["--dsn", dsn, "status"])
    assert "overdue" in table.output


def test_a_relay_enqueues_a_schedule_whose_handler_lives_elsewhere(
    schedules: sa.Engine, dsn: str
) -> None:
    registry = outbox.Registry()
    registry.handler("local.job")(lambda job: None)
    registry.schedule("remote", "remote.job", every=timedelta(seconds=1), queue="elsewhere")
    with running_relay(registry, dsn):
        wait_for(lambda: tick_keys(schedules, "remote"), 10, "a tick")
    queued = scalar(
        schedules,
        "SELECT count(*) FROM outbox_jobs WHERE type = 'remote.job' AND queue = 'elsewhere'",
    )
    assert queued >= 1


def test_a_relay_with_schedules_and_no_handlers_enqueues_ticks_and_claims_nothing(
    schedules: sa.Engine, dsn: str
) -> None:
    """A relay kept for schedules only (the handlers run elsewhere) starts and ticks."""
    registry = outbox.Registry()
    registry.schedule("only", "remote.job", every=timedelta(seconds=1))
    with running_relay(registry, dsn):
        wait_for(lambda: len(tick_keys(schedules, "only")) >= 2, 10, "two ticks")
    assert scalar(schedules, "SELECT count(*) FROM outbox_jobs WHERE state <> 'pending'") == 0


def test_the_relay_started_last_decides_and_an_older_one_takes_back_an_abandoned_row(
    schedules: sa.Engine, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scheduler, "TAKEOVER", timedelta(seconds=2))
    old, new = outbox.Registry(), outbox.Registry()
    for registry, version in ((old, 1), (new, 2)):
        registry.handler("beat.tick")(lambda job: None)
        registry.schedule("beat", "beat.tick", every=timedelta(seconds=1), payload={"v": version})

    def versions_since(moment: datetime) -> set[int]:
        with schedules.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT DISTINCT (payload->>'v')::int FROM outbox_history "
                    "WHERE type = 'beat.tick' AND event = 'enqueued' AND at > :since"
                ),
                {"since": moment},
            )
            return set(rows.scalars())

    with running_relay(old, dsn):
        wait_for(lambda: versions_since(now(schedules) - timedelta(hours=1)) == {1}, 10, "v1")
        with running_relay(new, dsn):
            wait_for(lambda: row(schedules, "beat").payload == {"v": 2}, 10, "v2 declared")
            switched = now(schedules)
            wait_for(lambda: versions_since(switched) == {2}, 10, "ticks of v2")
            stopped = now(schedules)
            # Three ticks later the older relay has left every tick to the newer one.
            wait_for(lambda: now(schedules) > stopped + timedelta(seconds=3), 10, "3 s")
            assert versions_since(switched) == {2}
        # The newer relay is gone: its row falls overdue, and the older relay takes it back.
        wait_for(lambda: row(schedules, "beat").payload == {"v": 1}, 15, "v1 declared again")
        back = now(schedules)
        wait_for(lambda: versions_since(back) == {1}, 10, "ticks of v1 again")
    keys = tick_keys(schedules, "beat")
    assert len(keys) == len(set(keys))


def test_a_tick_the_relay_cannot_enqueue_is_kept_due_and_reported_once(
    schedules: sa.Engine, dsn: str
) -> None:
    registry = outbox.Registry()
    registry.handler("beat.tick")(lambda job: None)
    registry.schedule("beat", "beat.tick", every=timedelta(seconds=1), payload={"x": "y" * 50})
    with capture_logs() as logs, running_relay(registry, dsn, payload_limit=20):
        first = wait_for(lambda: row(schedules, "beat"), 10, "the schedule's row")
        wait_for(lambda: now(schedules) > first.next_tick + timedelta(seconds=2), 10, "3 s")
        state = row(schedules, "beat")
    assert tick_keys(schedules, "beat") == []
    assert scalar(schedules, "SELECT count(*) FROM outbox_jobs") == 0
    # Nothing moved: the tick is still due, for a relay that can enqueue it.
    assert state.next_tick == first.next_tick
    assert state.last_tick is None
    failures = [e for e in logs if e["event"].startswith("schedule tick could not be enqueued")]
    assert len(failures) == 1
    assert "payload is" in failures[0]["error"]
