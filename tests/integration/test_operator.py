"""``outbox jobs show|retry|cancel``: what operators do by hand, each recorded with its actor."""

from __future__ import annotations

import json
import uuid

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlalchemy.orm import Session

import outbox
from outbox.cli import cli
from tests.integration.helpers import history, jobs


def enqueue(db: sa.Engine, n: int, key: str | None = None) -> list[outbox.Enqueued]:
    with Session(db) as session:
        handles = outbox.enqueue_many(
            session, [outbox.NewJob("op.job", {"n": i}, key=key) for i in range(n)]
        )
        session.commit()
    return handles


def set_state(db: sa.Engine, state: str, handle: outbox.Enqueued) -> None:
    lease = "now() + interval '1 minute'" if state == "running" else "NULL"
    with db.begin() as conn:
        conn.execute(
            sa.text(f"UPDATE outbox_jobs SET state = :s, relay = 'r', lease_expires_at = {lease}, "
                    "attempt = 3 WHERE uuid = :u"),
            {"s": state, "u": handle.uuid},
        )  # fmt: skip


def run(dsn: str, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["--dsn", dsn, "jobs", *args])
    return result.exit_code, result.stdout, result.stderr


def test_retry_revives_a_dead_job_and_records_who_and_why(db: sa.Engine, dsn: str) -> None:
    [job] = enqueue(db, 1)
    set_state(db, "dead", job)
    code, out, _ = run(dsn, "retry", str(job.uuid), "--actor", "alice", "--reason", "fixed the bug")
    assert code == 0, out
    assert "revived 1 job(s)" in out
    [row] = jobs(db)
    assert (row.state, row.attempt) == ("pending", 0)
    last = history(db, job.uuid)[-1]
    assert (last.event, last.actor, last.reason) == ("revived", "alice", "fixed the bug")


def test_retry_refuses_a_job_that_is_not_dead_and_says_why(db: sa.Engine, dsn: str) -> None:
    [job] = enqueue(db, 1)
    code, _, err = run(dsn, "retry", str(job.uuid), "--actor", "bob")
    assert code == 1
    assert f"{job.uuid} is pending, not dead" in err
    assert [h.event for h in history(db, job.uuid)] == ["enqueued"]


def test_cancel_ends_pending_and_dead_jobs_but_not_running_ones(db: sa.Engine, dsn: str) -> None:
    pending, dead, running = enqueue(db, 3)
    set_state(db, "dead", dead)
    set_state(db, "running", running)
    code, out, _ = run(dsn, "cancel", str(pending.uuid), str(dead.uuid), str(running.uuid),
                         "--actor", "carol", "--json")  # fmt: skip
    assert code == 1
    report = json.loads(out)
    assert sorted(report["cancelled"]) == sorted([str(pending.uuid), str(dead.uuid)])
    assert report["skipped"] == {str(running.uuid): "is running, not pending or dead"}
    assert [r.uuid for r in jobs(db)] == [running.uuid]
    for handle in (pending, dead):
        last = history(db, handle.uuid)[-1]
        assert (last.event, last.actor) == ("cancelled", "carol")


def test_actions_by_key_reach_every_eligible_job_of_it(db: sa.Engine, dsn: str) -> None:
    handles = enqueue(db, 3, key="account:9")
    set_state(db, "dead", handles[0])
    code, out, _ = run(dsn, "cancel", "--key", "account:9", "--actor", "dave", "--yes")
    assert code == 0, out
    assert "cancelled 3 job(s)" in out
    assert jobs(db) == []


def test_show_prints_the_job_and_its_history_even_after_it_ended(db: sa.Engine, dsn: str) -> None:
    [job] = enqueue(db, 1)
    code, out, _ = run(dsn, "show", str(job.uuid), "--json")
    assert code == 0
    shown = json.loads(out)
    assert shown["job"]["state"] == "pending"
    assert [h["event"] for h in shown["history"]] == ["enqueued"]
    run(dsn, "cancel", str(job.uuid), "--actor", "erin")
    code, out, _ = run(dsn, "show", str(job.uuid))
    assert code == 0
    assert "has ended" in out
    assert "cancelled" in out


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["show", str(uuid.uuid4())], 1, "was never enqueued here"),
        (["show", "not-a-uuid"], 2, "not a valid UUID"),
        (["retry", "--actor", "x"], 2, "name the jobs"),
        (["cancel", str(uuid.uuid4()), "--actor", " "], 1, "actor must be named"),
        (["cancel", str(uuid.uuid4()), "--actor", "x"], 1, "is not a live job"),
    ],
)
def test_operator_mistakes_get_clear_errors(
    db: sa.Engine, dsn: str, args: list[str], code: int, message: str
) -> None:
    result = CliRunner().invoke(cli, ["--dsn", dsn, "jobs", *args])
    assert result.exit_code == code
    assert message in result.output
