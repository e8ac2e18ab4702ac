"""``outbox jobs list``, ``jobs retry|cancel`` by filter, and what ``status``, ``jobs show``
and ``audit trail`` print at 80 columns when piped: uuids whole, times that read back."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import click
import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result
from outbox_relay import complete, execute
from outbox_relay.claim import AttemptLimits, claim_batch
from sqlalchemy.orm import Session

import outbox
from outbox import operator
from outbox.cli import cli
from outbox.cli import jobs as jobs_cli
from tests.integration.helpers import history, jobs

NARROW = {"COLUMNS": "80"}
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


def run(dsn: str, *args: str, input: str | None = None) -> Result:
    return CliRunner(env=NARROW).invoke(cli, ["--dsn", dsn, *args], input=input)


def enqueue(
    db: sa.Engine, n: int = 1, *, type: str = "op.job", queue: str = "default",
    key: str | None = None, delay: float | None = None, max_attempts: int | None = None,
) -> list[uuid.UUID]:  # fmt: skip
    with Session(db) as session:
        handles = [
            outbox.enqueue(
                session,
                type,
                {"n": i},
                queue=queue,
                key=key,
                delay=delay,
                max_attempts=max_attempts,
            )
            for i in range(n)
        ]
        session.commit()
    return [h.uuid for h in handles]


def fail(db: sa.Engine, queue: str = "default", type: str = "op.failing") -> None:
    """One attempt through the relay's own claim and completion, failing with a traceback."""
    failing = outbox.Registry()

    @failing.handler(type, queue=queue)
    def fails(job: outbox.Job) -> None:
        raise RuntimeError("card network down: GET [/v1/charges/ch_1] returned 502")

    limits = AttemptLimits(default=1, types=(type,))
    with db.connect() as conn:
        [job] = claim_batch(conn, queues=[queue], limit=1, lease=timedelta(seconds=30),
                            relay="vm:9403:5d5f8a", limits=limits)  # fmt: skip
        complete.complete(conn, "vm:9403:5d5f8a", [execute.run(failing[type], job)], failing)


def dead(db: sa.Engine, **options: Any) -> uuid.UUID:
    """A job that failed its one attempt (its own type, so that the claim takes it alone)."""
    options = {"type": "op.failing", **options}
    [job] = enqueue(db, max_attempts=1, **options)
    fail(db, queue=options.get("queue", "default"), type=options["type"])
    return job


def set_running(db: sa.Engine, job: uuid.UUID) -> None:
    with db.begin() as conn:
        conn.execute(
            sa.text("UPDATE outbox_jobs SET state = 'running', relay = 'r', attempt = 1, "
                    "lease_expires_at = now() + interval '1 minute' WHERE uuid = :u"),
            {"u": job},
        )  # fmt: skip


def listed(result: Result) -> list[str]:
    """The uuids a human listing shows, each found whole on a line of its own making."""
    assert result.exit_code == 0, result.output
    return [m[0] for line in result.stdout.splitlines() for m in UUID.finditer(line)]


def fits(result: Result, width: int = 80) -> str:
    """The output, every line of it within ``width`` but a traceback's, printed as raised."""
    assert result.exit_code == 0, result.output
    laid_out = result.stdout.split("\ntraceback of attempt")[0]
    for line in laid_out.splitlines():
        assert len(line.rstrip()) <= width, line
    return result.stdout


@pytest.fixture
def answer(monkeypatch: pytest.MonkeyPatch) -> Callable[[bool], list[str]]:
    """A person at a terminal who answers the confirmation; returns the questions asked."""

    def answering(yes: bool) -> list[str]:
        asked: list[str] = []

        def confirm(text: str, **_: Any) -> bool:
            asked.append(text)
            return yes

        monkeypatch.setattr(jobs_cli, "interactive", lambda: True)
        monkeypatch.setattr(click, "confirm", confirm)
        return asked

    return answering


# -- jobs list ------------------------------------------------------------------------------


def test_list_shows_live_jobs_oldest_first_with_whole_uuids(db: sa.Engine, dsn: str) -> None:
    made = enqueue(db, 3, queue="payments", key="account:42")
    assert listed(run(dsn, "jobs", "list")) == [str(u) for u in made]


def test_list_filters_by_state(db: sa.Engine, dsn: str) -> None:
    [pending] = enqueue(db)
    [scheduled] = enqueue(db, delay=3600)
    [running] = enqueue(db)
    set_running(db, running)
    died = dead(db)
    for state, expected in [("pending", [pending]), ("scheduled", [scheduled]),
                            ("running", [running]), ("dead", [died])]:  # fmt: skip
        assert listed(run(dsn, "jobs", "list", "--state", state)) == [str(u) for u in expected]
    both = run(dsn, "jobs", "list", "--state", "dead", "--state", "Scheduled")
    assert set(listed(both)) == {str(scheduled), str(died)}


def test_list_filters_by_queue_type_key_and_since(db: sa.Engine, dsn: str) -> None:
    [mail] = enqueue(db, queue="mail", type="receipt.send")
    [keyed] = enqueue(db, key="account:7")
    assert listed(run(dsn, "jobs", "list", "--queue", "mail")) == [str(mail)]
    assert listed(run(dsn, "jobs", "list", "--type", "receipt.send")) == [str(mail)]
    assert listed(run(dsn, "jobs", "list", "--key", "account:7")) == [str(keyed)]
    assert listed(run(dsn, "jobs", "list", "--queue", "mail", "--key", "account:7")) == []
    assert len(listed(run(dsn, "jobs", "list", "--since", "1h"))) == 2
    with db.begin() as conn:
        conn.execute(sa.text("UPDATE outbox_jobs SET enqueued_at = now() - interval '2 days' "
                             "WHERE uuid = :u"), {"u": mail})  # fmt: skip
    assert listed(run(dsn, "jobs", "list", "--since", "1d")) == [str(keyed)]
    # A time as the commands print it reads back: the old job's own enqueued_at selects it.
    printed = run(dsn, "jobs", "show", str(mail)).stdout
    [since] = [m[0] for line in printed.splitlines() if "enqueued_at" in line
               for m in [TIME.search(line)] if m]  # fmt: skip
    assert listed(run(dsn, "jobs", "list", "--since", since)) == [str(mail), str(keyed)]


def test_list_pages_by_id_and_says_when_more_match(db: sa.Engine, dsn: str) -> None:
    made = [str(u) for u in enqueue(db, 5)]
    first = run(dsn, "jobs", "list", "--limit", "2")
    assert listed(first) == made[:2]
    [after] = re.findall(r"add --after (\d+) for the next page", first.stdout)
    second = run(dsn, "jobs", "list", "--limit", "2", "--after", after)
    assert listed(second) == made[2:4]
    [after] = re.findall(r"add --after (\d+) for the next page", second.stdout)
    last = run(dsn, "jobs", "list", "--limit", "2", "--after", after)
    assert listed(last) == made[4:]
    assert "more match" not in last.stdout


def test_list_json_shape(db: sa.Engine, dsn: str) -> None:
    made = [str(u) for u in enqueue(db, 3, queue="payments", key="account:1")]
    page = json.loads(run(dsn, "jobs", "list", "--limit", "2", "--json").stdout)
    assert [j["uuid"] for j in page["jobs"]] == made[:2]
    assert page["next_after"] == page["jobs"][-1]["id"]
    job = page["jobs"][0]
    assert set(job) == {
        "id", "uuid", "state", "type", "queue", "key", "priority", "attempt", "max_attempts",
        "run_at", "enqueued_at", "relay", "lease_expires_at", "last_error",
    }  # fmt: skip
    assert (job["state"], job["queue"], job["key"]) == ("pending", "payments", "account:1")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?\+00:00", job["run_at"])
    rest = json.loads(run(dsn, "jobs", "list", "--json", "--after", str(page["next_after"])).stdout)
    assert ([j["uuid"] for j in rest["jobs"]], rest["next_after"]) == (made[2:], None)


def test_list_of_nothing_says_so(db: sa.Engine, dsn: str) -> None:
    result = run(dsn, "jobs", "list", "--queue", "nowhere")
    assert (result.exit_code, result.stdout) == (0, "no live job matches\n")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--state", "succeeded"], "succeeded jobs have left outbox_jobs"),
        (["--state", "cancelled"], "`outbox audit trail`"),
        (["--state", "done"], "'done' is not a state of a live job: use pending, scheduled"),
        (["--since", "yesterday"], "'yesterday' is not a time"),
        (["--since", "1y"], "or a time ago (90s, 30m, 1h, 2d, 1w)"),
        (["--limit", "0"], "--limit"),
    ],
)
def test_list_refuses_bad_filters_clearly(
    db: sa.Engine, dsn: str, args: list[str], message: str
) -> None:
    result = run(dsn, "jobs", "list", *args)
    assert result.exit_code == 2
    assert message in result.stderr


# -- retry and cancel by filter -------------------------------------------------------------


def test_retry_by_filter_refuses_without_a_terminal_unless_yes(db: sa.Engine, dsn: str) -> None:
    died = dead(db, queue="payments")
    result = run(dsn, "jobs", "retry", "--queue", "payments", "--actor", "alice")
    assert result.exit_code == 1
    assert "1 live job(s) match: 1 to be revived" in result.stdout
    assert "confirm with --yes (no terminal to ask on)" in result.stderr
    assert [j.state for j in jobs(db)] == ["dead"]
    assert history(db, died)[-1].event == "dead"


def test_retry_by_filter_asks_and_acts_on_yes_recording_the_actor(
    db: sa.Engine, dsn: str, answer: Callable[[bool], list[str]]
) -> None:
    died = [dead(db, queue="payments") for _ in range(2)]
    [waiting] = enqueue(db, queue="payments")
    asked = answer(True)
    result = run(dsn, "jobs", "retry", "--queue", "payments", "--actor", "alice",
                 "--reason", "card network back up")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert asked == ["Revive 2 job(s)?"]
    assert "3 live job(s) match: 2 to be revived, 1 skipped (1 pending: only dead jobs are " \
        "revived)" in result.stdout  # fmt: skip
    assert "revived 2 job(s)" in result.stdout
    for job in died:
        last = history(db, job)[-1]
        assert (last.event, last.actor, last.reason) == ("revived", "alice", "card network back up")
    assert [h.event for h in history(db, waiting)] == ["enqueued"]


def test_retry_by_filter_answered_no_changes_nothing(
    db: sa.Engine, dsn: str, answer: Callable[[bool], list[str]]
) -> None:
    died = dead(db)
    answer(False)
    result = run(dsn, "jobs", "retry", "--state", "dead", "--actor", "alice")
    assert result.exit_code == 1
    assert "nothing revived: not confirmed" in result.stderr
    assert history(db, died)[-1].event == "dead"


def test_an_action_by_filter_touches_only_the_jobs_it_counted(
    db: sa.Engine, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    counted = enqueue(db, 2, queue="mail")
    late: list[uuid.UUID] = []

    def confirm(text: str, **_: Any) -> bool:  # a job arrives while the operator reads
        late.extend(enqueue(db, queue="mail"))
        return True

    monkeypatch.setattr(jobs_cli, "interactive", lambda: True)
    monkeypatch.setattr(click, "confirm", confirm)
    result = run(dsn, "jobs", "cancel", "--queue", "mail", "--actor", "bob")
    assert result.exit_code == 0, result.output
    assert "cancelled 2 job(s)" in result.stdout
    assert [j.uuid for j in jobs(db)] == late
    assert {h.event for u in counted for h in history(db, u)} == {"enqueued", "cancelled"}


def test_cancel_by_filter_never_touches_running_jobs_and_counts_them(
    db: sa.Engine, dsn: str
) -> None:
    pending, running = enqueue(db, 2, key="account:9")
    set_running(db, running)
    died = dead(db)
    scheduled = enqueue(db, delay=600)
    result = run(dsn, "jobs", "cancel", "--all", "--yes", "--actor", "carol", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert sorted(report["cancelled"]) == sorted(str(u) for u in [pending, died, *scheduled])
    assert (report["matched"], report["skipped_by_state"], report["skipped"]) == (
        4, {"running": 1}, {},
    )  # fmt: skip
    assert "1 skipped (1 running: only pending, scheduled or dead jobs are cancelled)" in (
        result.stderr
    )
    assert [j.uuid for j in jobs(db)] == [running]
    assert history(db, died)[-1].actor == "carol"


def test_retry_by_filter_with_nothing_dead_says_so(db: sa.Engine, dsn: str) -> None:
    enqueue(db, queue="mail")
    result = run(dsn, "jobs", "retry", "--queue", "mail", "--yes")
    assert result.exit_code == 1
    assert "nothing revived: no matching job is dead" in result.stderr
    nothing = run(dsn, "jobs", "cancel", "--queue", "nowhere", "--yes")
    assert nothing.exit_code == 1
    assert "nothing cancelled: no live job matches" in nothing.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "name the jobs: one or more uuids, or filters"),
        (["--all", "--queue", "mail"], "--all selects every live job: give it without filters"),
        ([str(uuid.uuid4()), "--queue", "mail"], "by uuid or select them with filters, not both"),
        (["--state", "succeeded"], "`outbox audit trail`"),
        (["--since", "soon"], "'soon' is not a time"),
    ],
)
def test_actions_refuse_malformed_selections(
    db: sa.Engine, dsn: str, args: list[str], message: str
) -> None:
    enqueue(db, queue="mail")
    for command in ("retry", "cancel"):
        result = run(dsn, "jobs", command, *args, "--yes")
        assert result.exit_code == 2, result.output
        assert message in result.stderr
    assert [h.event for h in history(db)] == ["enqueued"]


def test_actions_by_uuid_name_an_unknown_uuid(db: sa.Engine, dsn: str) -> None:
    unknown = uuid.uuid4()
    result = run(dsn, "jobs", "cancel", str(unknown), "--actor", "x")
    assert result.exit_code == 1
    assert f"not cancelled: {unknown} is not a live job (ended, or never was)" in result.stderr


def test_act_in_batches_commits_each_batch_and_records_each_change(db: sa.Engine) -> None:
    made = enqueue(db, 5)
    with db.connect() as conn:
        done = operator.act_in_batches(
            conn, operator.cancel, [*made, uuid.UUID(int=1)], actor="dora", batch=2
        )
    assert done.changed == made
    assert done.skipped == {uuid.UUID(int=1): "is not a live job (ended, or never was)"}
    assert jobs(db) == []
    assert {h.actor for u in made for h in history(db, u) if h.event == "cancelled"} == {"dora"}
    with db.connect() as conn, pytest.raises(outbox.InvalidJob, match="actor must be named"):
        operator.act_in_batches(conn, operator.cancel, made, actor=" ")


# -- 80 columns, piped ------------------------------------------------------------------------


def test_show_fits_80_columns_with_whole_uuid_times_and_the_traceback_after(
    db: sa.Engine, dsn: str
) -> None:
    died = dead(db, key="account:42-with-a-rather-long-key-that-must-fold-somewhere-to-fit")
    out = fits(run(dsn, "jobs", "show", str(died)))
    assert f"job {died}" in out.splitlines()[0]
    assert re.search(r"^\S+Z  failed attempt 1$", out, re.MULTILINE)
    assert re.search(r"took=(<0\.1ms|[\d.]+m?s)\s", out)
    tail = out[out.index("traceback of attempt 1, failed at ") :]
    assert "Traceback (most recent call last):" in tail
    assert tail.rstrip().endswith(
        "RuntimeError: card network down: GET [/v1/charges/ch_1] returned 502"
    )
    shown = json.loads(run(dsn, "jobs", "show", str(died), "--json").stdout)
    [failed] = [h for h in shown["history"] if h["event"] == "failed"]
    assert failed["error_type"] == "builtins.RuntimeError"
    assert failed["error_traceback"].startswith("Traceback")
    assert "error" not in failed


def test_trail_fits_80_columns_and_its_times_read_back_as_since(db: sa.Engine, dsn: str) -> None:
    died = dead(db, key="account:42")
    out = fits(run(dsn, "audit", "trail", "--key", "account:42"))
    firsts = [line for line in out.splitlines() if str(died) in line]
    assert len(firsts) == 4  # enqueued, claimed, failed, dead: each names the job whole
    assert out.splitlines()[0] == "4 history row(s), oldest first"
    assert "error: builtins.RuntimeError: card network down" in out
    printed = TIME.match(firsts[0])
    assert printed is not None
    again = run(dsn, "audit", "trail", "--key", "account:42", "--since", printed[0])
    assert again.stdout == out
    assert run(dsn, "audit", "trail", "--since", "1h", "--format", "json").exit_code == 0
    later = json.loads(run(dsn, "audit", "trail", "--since", "2h", "--format", "json").stdout)
    assert [r["event"] for r in later] == ["enqueued", "claimed", "failed", "dead"]
    assert later[2]["error_type"] == "builtins.RuntimeError"
    bad = run(dsn, "audit", "trail", "--until", "tomorrow")
    assert (bad.exit_code, "'tomorrow' is not a time" in bad.stderr) == (2, True)


def test_trail_says_when_it_stopped_at_the_limit(db: sa.Engine, dsn: str) -> None:
    enqueue(db, 3)
    out = fits(run(dsn, "audit", "trail", "--limit", "2"))
    assert (
        out.splitlines()[0] == "2 history row(s), oldest first; that is --limit: there may be more"
    )


def test_list_and_status_fit_80_columns_with_whole_uuids(db: sa.Engine, dsn: str) -> None:
    died = dead(db, queue="payments", type="payment.capture", key="account:42")
    behind = enqueue(db, 3, queue="payments", type="payment.capture", key="account:42")
    listing = fits(run(dsn, "jobs", "list"))
    assert listed(run(dsn, "jobs", "list")) == [str(died), *(str(u) for u in behind)]
    assert "error: card network down" in listing
    status = fits(run(dsn, "status"))
    [line] = [line for line in status.splitlines() if str(died) in line]
    assert "account:42" in line


def test_list_prints_stored_text_literally_with_controls_escaped(db: sa.Engine, dsn: str) -> None:
    died = dead(db, key="[red]k[/]")
    with db.begin() as conn:
        conn.execute(sa.text("UPDATE outbox_jobs SET last_error = :e"), {"e": "[bold]x\x1b[31m\n"})
    result = run(dsn, "jobs", "list")
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.stdout
    assert "key=[red]k[/]" in result.stdout
    assert "error: [bold]x\\x1b[31m\\n" in result.stdout
    assert listed(result) == [str(died)]
