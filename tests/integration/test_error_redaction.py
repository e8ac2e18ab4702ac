"""Redaction keeps payload values out of stored errors too (G7): with `outbox audit redaction
on`, a failed attempt's error is stored as its type and the SHA-256 of the error as raised, in
history and in `outbox_jobs.last_error`, and the digest chain hashes the rows as stored."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
import structlog
import tenacity
from alembic import command
from click.testing import CliRunner
from outbox_relay.claim import AttemptLimits, claim_batch
from outbox_relay.rescue import rescue_expired
from sqlalchemy.orm import Session

import outbox
from outbox import migrate
from outbox.cli import cli
from outbox.database import create_engine
from outbox.testing import temporary_database
from tests.integration.relay_harness import events, running_relay, scalar, wait_for
from tests.integration.test_append_only import as_role, login_role
from tests.integration.test_audit import CLAIM, check, seal_everything

CARD = "4111-2222-3333-4444"
TRIGGERS = {
    "outbox_history_redact_error": "outbox_history",
    "outbox_history_redact_payload": "outbox_history",
    "outbox_jobs_redact_error": "outbox_jobs",
}


def run(dsn: str, *args: str) -> Any:
    """The command line, printing tables wide enough that no value is cut."""
    return CliRunner().invoke(
        cli, ["--dsn", dsn, *args], catch_exceptions=False, env={"COLUMNS": "400"}
    )


def turn(dsn: str, state: str) -> str:
    result = run(dsn, "audit", "redaction", state)
    assert result.exit_code == 0, result.output
    return str(result.output).strip()


@pytest.fixture
def redaction(db: sa.Engine, dsn: str) -> Iterator[sa.Engine]:
    """Redaction on for one test; off again after it, whatever happens (the database is
    shared by the tests of this process)."""
    assert turn(dsn, "on") == "payload redaction is on"
    try:
        yield db
    finally:
        turn(dsn, "off")


def card_registry() -> outbox.Registry:
    registry = outbox.Registry()

    @registry.handler("card.parse", max_attempts=2, retry=tenacity.wait_fixed(0))
    def parse(job: outbox.Job) -> None:
        int(job.payload["card"])  # ValueError: invalid literal for int() ... the number

    return registry


def enqueue_card(engine: sa.Engine) -> Any:
    with Session(engine) as session:
        handle = outbox.enqueue(session, "card.parse", {"card": CARD})
        session.commit()
    return handle.uuid


def run_to_dead(engine: sa.Engine, dsn: str) -> tuple[Any, dict[str, Any]]:
    """Run a card job through a real relay until it is dead (two failed attempts); return its
    uuid and the error as raised, which the relay logs with the job's death."""
    uuid = enqueue_card(engine)
    with structlog.testing.capture_logs() as logged, running_relay(card_registry(), dsn):
        wait_for(lambda: "dead" in events(engine, uuid), timeout=10, what="the job to die")
    [dead] = [e for e in logged if e["event"] == "job dead"]
    raised = {"type": dead["error_type"], "message": dead["error"], "traceback": dead["traceback"]}
    return uuid, raised


def sha256_of_jsonb(engine: sa.Engine, value: dict[str, Any]) -> str:
    """What an auditor holding an error computes: its SHA-256 as jsonb prints it."""
    return str(scalar(
        engine, "SELECT encode(sha256(convert_to(CAST(:v AS jsonb)::text, 'UTF8')), 'hex')",
        v=json.dumps(value),
    ))  # fmt: skip


def stored_errors(engine: sa.Engine, uuid: Any) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return list(conn.execute(sa.text(
            "SELECT error FROM outbox_history WHERE job_uuid = :u AND event = 'failed' ORDER BY id"
        ), {"u": uuid}).scalars())  # fmt: skip


def last_error(engine: sa.Engine, uuid: Any) -> str:
    return str(scalar(engine, "SELECT last_error FROM outbox_jobs WHERE uuid = :u", u=uuid))


def operators_see(dsn: str, uuid: Any) -> str:
    """Everything `outbox jobs show` and `outbox audit trail` print about the job's errors."""
    outputs = [run(dsn, "jobs", "show", str(uuid))]
    outputs += [
        run(dsn, "audit", "trail", "--job", str(uuid), "--format", fmt)
        for fmt in ("table", "json", "csv")
    ]
    for result in outputs:
        assert result.exit_code == 0, result.output
    return "\n".join(str(r.output) for r in outputs)


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# -- what is stored ----------------------------------------------------------------------


def test_with_redaction_on_stored_errors_keep_their_type_and_digest_and_never_the_message(
    redaction: sa.Engine, dsn: str
) -> None:
    uuid, raised = run_to_dead(redaction, dsn)
    assert CARD in raised["message"]  # the relay's log has it; storage must not
    first, second = stored_errors(redaction, uuid)
    assert second == {
        "type": "builtins.ValueError",
        "message": "ValueError: message redacted",
        "traceback": None,
        "redacted": True,
        "sha256": sha256_of_jsonb(redaction, raised),
    }
    assert first.keys() == second.keys()  # the first attempt's, redacted the same way
    # The type is not in the job's row, only in history, which `jobs show` prints below it.
    assert last_error(redaction, uuid) == (
        f"message redacted (sha256 {sha256_hex(raised['message'])})"
    )
    shown = operators_see(dsn, uuid)
    assert "4111" not in shown
    assert "ValueError: message redacted" in shown
    # As JSON, `jobs show` prints the live job's payload too, kept until the job ends.
    printed = json.loads(run(dsn, "jobs", "show", str(uuid), "--json").output)
    assert printed["job"].pop("payload") == {"card": CARD}
    assert "4111" not in json.dumps(printed, default=str)


def test_with_redaction_off_errors_are_stored_as_raised(db: sa.Engine, dsn: str) -> None:
    uuid, raised = run_to_dead(db, dsn)
    assert stored_errors(db, uuid)[-1] == raised
    assert last_error(db, uuid) == raised["message"]
    assert f"invalid literal for int() with base 10: '{CARD}'" in operators_see(dsn, uuid)


def test_redaction_covers_errors_when_the_relay_logs_in_with_the_writer_role_alone(
    redaction: sa.Engine, dsn: str
) -> None:
    for writer in login_role(redaction, "outbox_writer"):
        uuid, raised = run_to_dead(redaction, as_role(dsn, writer))
        assert stored_errors(redaction, uuid)[-1]["sha256"] == sha256_of_jsonb(redaction, raised)
        assert CARD not in last_error(redaction, uuid)


def test_errors_stored_before_redaction_stay_as_they_are(db: sa.Engine, dsn: str) -> None:
    uuid, raised = run_to_dead(db, dsn)
    assert turn(dsn, "on") == "payload redaction is on"
    try:
        # An operator revives the job; it fails twice more, now redacted.
        assert run(dsn, "jobs", "retry", str(uuid), "--actor", "ops").exit_code == 0
        assert last_error(db, uuid) == raised["message"]  # nothing rewrote it
        with running_relay(card_registry(), dsn):
            wait_for(lambda: events(db, uuid).count("dead") == 2, timeout=10, what="the job")
    finally:
        turn(dsn, "off")
    errors = stored_errors(db, uuid)
    assert errors[0]["message"] == raised["message"]
    assert errors[1] == raised
    assert [e.get("redacted") for e in errors[2:]] == [True, True]
    # The same message again is redacted: the trigger compares it with what is stored.
    assert last_error(db, uuid) == f"message redacted (sha256 {sha256_hex(raised['message'])})"


def test_a_rescue_keeps_its_own_message_which_names_only_the_relay(
    redaction: sa.Engine, dsn: str
) -> None:
    uuid = enqueue_card(redaction)
    with redaction.connect() as conn:
        claim_batch(
            conn, relay="host:1:a", **{**CLAIM, "limits": AttemptLimits(5, ("card.parse",))}
        )
    with redaction.begin() as conn:
        conn.execute(sa.text("UPDATE outbox_jobs SET lease_expires_at = now() - interval '1s'"))
    with redaction.connect() as conn:
        assert rescue_expired(conn) == 1
    assert last_error(redaction, uuid) == "lease expired on relay host:1:a"


def test_any_other_last_error_is_redacted_and_other_updates_leave_it_alone(
    redaction: sa.Engine,
) -> None:
    uuid = enqueue_card(redaction)
    with redaction.begin() as conn:
        conn.execute(sa.text("UPDATE outbox_jobs SET last_error = :e"), {"e": f"no {CARD}"})
    assert last_error(redaction, uuid) == f"message redacted (sha256 {sha256_hex(f'no {CARD}')})"
    kept = last_error(redaction, uuid)
    with redaction.begin() as conn:
        conn.execute(sa.text("UPDATE outbox_jobs SET priority = 5, run_at = now()"))
        conn.execute(sa.text("UPDATE outbox_jobs SET last_error = last_error"))
    assert last_error(redaction, uuid) == kept


# -- the digest chain --------------------------------------------------------------------


def test_redacted_errors_are_sealed_and_verified_as_stored(redaction: sa.Engine, dsn: str) -> None:
    uuid, raised = run_to_dead(redaction, dsn)
    seal_everything(redaction)
    report = check(redaction)
    assert report.seals >= 1
    assert report.rows >= 6
    canonical = scalar(
        redaction,
        "SELECT outbox_history_canonical(h) FROM outbox_history h "
        "WHERE job_uuid = :u AND event = 'failed' ORDER BY id DESC LIMIT 1",
        u=uuid,
    )
    assert f'"sha256": "{sha256_of_jsonb(redaction, raised)}"' in canonical
    assert "4111" not in canonical
    result = run(dsn, "audit", "verify")
    assert result.exit_code == 0, result.output


# -- the command -------------------------------------------------------------------------


def enabled(engine: sa.Engine) -> dict[str, bool]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT tgname, tgenabled <> 'D' FROM pg_trigger WHERE tgname = ANY(:names)"
        ), {"names": list(TRIGGERS)}).all()  # fmt: skip
    return {name: bool(on) for name, on in rows}


def test_redaction_on_and_off_switch_every_redaction_trigger_together(
    db: sa.Engine, dsn: str
) -> None:
    try:
        assert turn(dsn, "on") == "payload redaction is on"
        assert enabled(db) == dict.fromkeys(TRIGGERS, True)
        assert turn(dsn, "show") == "payload redaction is on"
    finally:
        assert turn(dsn, "off") == "payload redaction is off"
    assert enabled(db) == dict.fromkeys(TRIGGERS, False)
    assert turn(dsn, "show") == "payload redaction is off"


def test_a_redaction_partly_on_is_shown_as_such(db: sa.Engine, dsn: str) -> None:
    try:
        turn(dsn, "on")
        with db.begin() as conn:
            conn.execute(
                sa.text("ALTER TABLE outbox_jobs DISABLE TRIGGER outbox_jobs_redact_error")
            )
        shown = turn(dsn, "show")
        assert shown.startswith("payload redaction is partly on")
        assert "outbox_jobs_redact_error" in shown.split("off:")[1]
        assert turn(dsn, "on") == "payload redaction is on"
    finally:
        turn(dsn, "off")


# -- the migration -----------------------------------------------------------------------


@pytest.fixture
def empty(server: str) -> Iterator[str]:
    with temporary_database(server, prefix="outbox_redact", migrated=False) as dsn:
        yield dsn


def downgrade_to_0008(dsn: str) -> None:
    engine = create_engine(dsn, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            command.downgrade(migrate.alembic_config(conn), "outbox_0008")
            conn.commit()
            assert migrate.current(conn) == "outbox_0008"
    finally:
        engine.dispose()


@pytest.mark.parametrize("state", ["on", "off"])
def test_migrate_down_and_up_again_keeps_the_redaction_state(empty: str, state: str) -> None:
    assert "upgraded from nothing" in run(empty, "migrate").output
    turn(empty, state)
    downgrade_to_0008(empty)
    engine = create_engine(empty, poolclass=sa.NullPool)
    try:
        assert set(enabled(engine)) == {"outbox_history_redact_payload"}
        assert enabled(engine)["outbox_history_redact_payload"] is (state == "on")
        for function in ("outbox_redact_error()", "outbox_redact_last_error()"):
            assert scalar(engine, "SELECT to_regprocedure(:f)", f=function) is None
        upgraded = run(empty, "migrate")
        assert f"upgraded from outbox_0008 to {migrate.head()}" in upgraded.output
        # Redaction that was on before the upgrade covers errors from then on.
        assert enabled(engine) == dict.fromkeys(TRIGGERS, state == "on")
        assert turn(empty, "show") == f"payload redaction is {state}"
    finally:
        engine.dispose()
