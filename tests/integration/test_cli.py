"""``outbox status`` and ``outbox demo`` against a real database."""

from __future__ import annotations

import json
import os

import psycopg
import sqlalchemy as sa
from click.testing import CliRunner
from sqlalchemy.orm import Session
from structlog.testing import capture_logs

import outbox
from outbox.cli import cli
from outbox.database import libpq_dsn


def test_status_json_matches_what_was_enqueued(db: sa.Engine, dsn: str) -> None:
    with Session(db) as session:
        outbox.enqueue_many(session, [outbox.NewJob("a.b", {}, queue="ledger")] * 3)
        outbox.enqueue(session, "a.b", {}, queue="ledger", delay=3600)
        outbox.enqueue(session, "a.b", {}, queue="mail", key="acct:1")
        outbox.enqueue(session, "a.b", {}, queue="mail", key="acct:1")
        session.commit()
    with db.begin() as conn:  # the head of acct:1 died: its key is blocked (G4)
        conn.execute(sa.text(
            "UPDATE outbox_jobs SET state = 'dead' "
            "WHERE id = (SELECT min(id) FROM outbox_jobs WHERE key = 'acct:1')"
        ))  # fmt: skip
    result = CliRunner().invoke(cli, ["--dsn", dsn, "status", "--json"])
    assert result.exit_code == 0, result.output
    status = json.loads(result.output)
    depth = {q["queue"]: q for q in status["queues"]}
    assert (depth["ledger"]["ready"], depth["ledger"]["scheduled"]) == (3, 1)
    assert (depth["mail"]["ready"], depth["mail"]["dead"]) == (1, 1)
    assert depth["ledger"]["oldest_ready_seconds"] >= 0
    [blocked] = status["blocked_keys"]
    assert (blocked["key"], blocked["waiting"]) == ("acct:1", 1)


def test_status_table_renders(db: sa.Engine, dsn: str) -> None:
    result = CliRunner(env={"COLUMNS": "160"}).invoke(cli, ["--dsn", dsn, "status"])
    assert result.exit_code == 0, result.output
    assert "no live jobs" in result.output


def test_demo_runs_the_ledger_and_reports_it_balanced(server: str) -> None:
    # A database of this test's own (a server's outbox_demo may be an older demo's), dropped
    # after: the demo keeps its database for the user to look at.
    name = f"outbox_demo_cli_test_{os.getpid()}"
    args = ["--dsn", server, "demo", "--database", name, "--transfers", "12"]
    try:
        result = CliRunner().invoke(cli, args)
    finally:
        with psycopg.connect(libpq_dsn(server), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    assert result.exit_code == 0, result.output
    assert "12 transfers committed" in result.output
    assert "5 recognised as duplicates" in result.output
    assert "0 jobs left behind" in result.output
    assert "balanced" in result.output
    assert "audit: digest chain verified" in result.output
    assert "over 108 history rows (of 108)" in result.output  # 36 jobs: enqueued, claimed, done
    assert "12 transfer.posted events, signatures verified, 12 applied" in result.output
    assert "sent again: HTTP 200, skipped by the inbox; forged: HTTP 401, refused" in result.output


def test_demo_refuses_nonsense_options(server: str) -> None:
    result = CliRunner().invoke(cli, ["--dsn", server, "demo", "--transfers", "0"])
    assert result.exit_code == 2
    assert "--transfers" in result.output


def test_status_lists_live_relays_and_the_last_minute(db: sa.Engine, dsn: str) -> None:
    from tests.integration.relay_harness import live_jobs, running_relay, wait_for

    registry = outbox.Registry()
    registry.register("st.ok", lambda job: None, queue="mail")
    with Session(db) as session:
        outbox.enqueue_many(session, [outbox.NewJob("st.ok", {}, queue="mail")] * 4)
        session.commit()
    # The relay's log lines are kept from the CLI's output: the in-process relay logs (its
    # sealer starting, say) while the command runs, into the same stream.
    with capture_logs(), running_relay(registry, dsn) as worker:
        wait_for(lambda: live_jobs(db) == 0, what="the jobs")
        result = CliRunner().invoke(cli, ["--dsn", dsn, "status", "--json"])
        assert result.exit_code == 0, result.output
        status = json.loads(result.output)
        [relay] = status["relays"]
        assert (relay["relay"], relay["queues"]) == (worker.relay, ["mail"])
        assert status["last_minute"] == {"mail": {"succeeded": 4}}
        table = CliRunner(env={"COLUMNS": "200"}).invoke(cli, ["--dsn", dsn, "status"])
        assert worker.relay in table.output
    after = json.loads(CliRunner().invoke(cli, ["--dsn", dsn, "status", "--json"]).output)
    assert after["relays"] == []  # a relay that stops cleanly leaves
