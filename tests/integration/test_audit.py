"""G7 against a real database: complete history, the digest chain, verification, export, prune."""

from __future__ import annotations

import hashlib
import json
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from outbox_relay import complete, execute
from outbox_relay.claim import AttemptLimits, claim_batch, claim_isolated
from outbox_relay.rescue import rescue_expired
from outbox_relay.sealer import Sealer
from sqlalchemy.orm import Session

import outbox
import outbox.operator
from outbox.audit import chain, retention, seal, trail, verify
from outbox.audit.verify import VerificationError
from outbox.cli import cli
from outbox.database import create_engine
from outbox.errors import OutboxError
from tests.integration.relay_harness import SEALING, events, running_relay, scalar, wait_for

CLAIM = {"queues": ["default"], "limit": 1, "lease": timedelta(seconds=30),
         "limits": AttemptLimits(default=5, types=("a.b",))}  # fmt: skip


def enqueue(engine: sa.Engine, count: int, **options: Any) -> list[outbox.Enqueued]:
    with Session(engine) as session:
        handles = outbox.enqueue_many(
            session, [outbox.NewJob("a.b", {"n": n}, **options) for n in range(count)]
        )
        session.commit()
    return handles


UNSEALED = """
    SELECT count(*) FROM outbox_history
    WHERE xid >= (SELECT coalesce(max(xid_to), 0) FROM outbox_seals)
"""


def seal_everything(engine: sa.Engine, max_rows: int = seal.SEAL_ROWS) -> None:
    """Seal until every history row is sealed (other databases' transactions may hold the
    cluster's xmin back for a moment)."""

    def sealed_all() -> bool:
        with engine.connect() as conn:
            seal.seal_all(conn, max_rows=max_rows)
        return bool(scalar(engine, UNSEALED) == 0)

    wait_for(sealed_all, timeout=SEALING, what="every history row to be sealed")


def check(engine: sa.Engine, **options: Any) -> verify.Report:
    with engine.connect() as conn:
        return verify.verify(conn, **options)


def tamper(engine: sa.Engine, sql: str) -> None:
    """What a superuser can do: set the append-only triggers aside and change history."""
    with engine.begin() as conn:
        conn.execute(sa.text("SET LOCAL session_replication_role = replica"))
        conn.execute(sa.text(sql))


def digests_file(engine: sa.Engine, path: Path) -> Path:
    with engine.connect() as conn:
        last = chain.latest_seal(conn)
    assert last is not None
    path.write_text(f"# kept elsewhere\n{last.id} {last.digest.hex()} {last.sealed_at}\n")
    return path


def run(dsn: str, *args: str) -> Any:
    return CliRunner().invoke(cli, ["--dsn", dsn, *args], catch_exceptions=False)


# -- completeness ----------------------------------------------------------------------


def test_history_of_a_job_that_failed_twice_was_rescued_once_then_succeeded(
    db: sa.Engine,
) -> None:
    registry = outbox.Registry()
    registry.register("a.b", lambda job: None)
    failing = outbox.Registry()

    @failing.handler("a.b")
    def fails(job: outbox.Job) -> None:
        raise RuntimeError(f"bank timeout {job.attempt}")

    [handle] = enqueue(db, 1, key="acct:7")

    for _ in range(2):
        with db.connect() as conn:
            [job] = claim_batch(conn, relay="host:1:a", **CLAIM)
            complete.complete(conn, "host:1:a", [execute.run(failing["a.b"], job)], registry)
        with db.begin() as conn:  # skip the backoff
            conn.execute(sa.text("UPDATE outbox_jobs SET run_at = now()"))
    with db.connect() as conn:
        claim_batch(conn, relay="host:2:b", **CLAIM)  # ... and that relay dies
    with db.begin() as conn:
        conn.execute(sa.text("UPDATE outbox_jobs SET lease_expires_at = now() - interval '1s'"))
    with db.connect() as conn:
        assert rescue_expired(conn) == 1
        # It lost its lease beside others for all we know: its attempt is given back, and
        # from now on it runs alone.
        job = claim_isolated(
            conn, relay="host:3:c", **{k: v for k, v in CLAIM.items() if k != "limit"}
        )
        assert job is not None
        complete.complete(conn, "host:3:c", [execute.run(registry["a.b"], job)], registry)

    assert events(db, handle.uuid) == [
        "enqueued",
        "claimed", "failed", "retried",
        "claimed", "failed", "retried",
        "claimed", "rescued",
        "claimed", "succeeded",
    ]  # fmt: skip
    with db.connect() as conn:
        rows = trail.trail(conn, job=handle.uuid)
        summary = conn.execute(
            sa.text("SELECT * FROM outbox_audit_jobs WHERE uuid = :u"), {"u": handle.uuid}
        ).one()
    assert [r["attempt"] for r in rows] == [0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 3]
    assert [r["relay"] for r in rows if r["event"] == "claimed"] == [
        "host:1:a", "host:1:a", "host:2:b", "host:3:c"
    ]  # fmt: skip
    assert [r["error_message"] for r in rows if r["event"] == "failed"] == [
        "bank timeout 1", "bank timeout 2"
    ]  # fmt: skip
    assert all(r["key"] == "acct:7" and r["type"] == "a.b" for r in rows)
    assert all(r["xid"] > 0 for r in rows)
    assert rows[-1]["duration_ms"] is not None
    assert (summary.outcome, summary.attempts, summary.failures, summary.rescues) == (
        "succeeded", 4, 2, 1
    )  # fmt: skip
    assert sorted(summary.relays) == ["host:1:a", "host:2:b", "host:3:c"]


def test_history_keeps_the_payload_until_redaction_keeps_only_its_sha256(
    db: sa.Engine, dsn: str
) -> None:
    assert run(dsn, "audit", "redaction", "on").output.strip() == "payload redaction is on"
    try:
        [handle] = enqueue(db, 1)
        enqueue(db, 600)  # the COPY path is redacted too
    finally:
        assert "off" in run(dsn, "audit", "redaction", "off").output
    with db.connect() as conn:
        kept, digest, text = conn.execute(sa.text(
            "SELECT h.payload, h.payload_sha256, j.payload::text FROM outbox_history h "
            "JOIN outbox_jobs j ON j.uuid = h.job_uuid WHERE h.job_uuid = :u"
        ), {"u": handle.uuid}).one()  # fmt: skip
        redacted = conn.execute(sa.text(
            "SELECT count(*) FROM outbox_history "
            "WHERE payload IS NULL AND payload_sha256 IS NOT NULL"
        )).scalar()  # fmt: skip
    assert kept is None
    assert bytes(digest) == hashlib.sha256(text.encode()).digest()
    assert redacted == 601
    [after] = enqueue(db, 1)
    assert scalar(db, "SELECT payload FROM outbox_history WHERE job_uuid = :u", u=after.uuid) == {
        "n": 0
    }


# -- the chain -------------------------------------------------------------------------


def test_sealed_history_verifies_and_every_row_is_in_exactly_one_seal(db: sa.Engine) -> None:
    for _ in range(5):
        enqueue(db, 30, key="k")
    seal_everything(db, max_rows=40)
    report = check(db)
    assert report.rows == scalar(db, "SELECT count(*) FROM outbox_history") == 150
    assert report.seals == scalar(db, "SELECT count(*) FROM outbox_seals") >= 4
    assert scalar(db, """
        SELECT count(*) FROM outbox_history h
        WHERE (SELECT count(*) FROM outbox_seals s
               WHERE h.xid >= s.xid_from AND h.xid < s.xid_to) <> 1
    """) == 0  # fmt: skip


def test_a_row_changed_behind_the_triggers_fails_verification_naming_it(
    db: sa.Engine, dsn: str
) -> None:
    enqueue(db, 20)
    seal_everything(db)
    victim = scalar(db, "SELECT id FROM outbox_history ORDER BY id OFFSET 7 LIMIT 1")
    tamper(db, f"UPDATE outbox_history SET payload = '{{\"n\": 1000000}}' WHERE id = {victim}")
    with pytest.raises(VerificationError, match=f"history row {victim} does not match"):
        check(db)
    result = run(dsn, "audit", "verify")
    assert result.exit_code == 1
    assert f"history row {victim}" in result.output


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("DELETE FROM outbox_history WHERE id = (SELECT max(id) FROM outbox_history)", "missing"),
        ("INSERT INTO outbox_history (job_uuid, event, type, queue, xid) "
         "VALUES (gen_random_uuid(), 'succeeded', 'a.b', 'default', 1)", "added"),
        ("UPDATE outbox_seals SET row_count = row_count + 1", "does not match its own fields"),
        ("DELETE FROM outbox_seals WHERE id = (SELECT min(id) FROM outbox_seals)", "link"),
    ],
)  # fmt: skip
def test_rows_or_seals_removed_or_added_fail_verification(
    db: sa.Engine, change: str, message: str
) -> None:
    for _ in range(3):
        enqueue(db, 10)
        seal_everything(db)
    tamper(db, change)
    with pytest.raises(VerificationError, match=message):
        check(db)


def test_rewriting_a_row_and_recomputing_every_seal_is_caught_by_an_exported_digest(
    db: sa.Engine, dsn: str, tmp_path: Path
) -> None:
    enqueue(db, 20)
    seal_everything(db)
    kept = digests_file(db, tmp_path / "digests.txt")
    assert run(dsn, "audit", "verify", "--against", str(kept)).exit_code == 0
    tamper(db, "UPDATE outbox_history SET key = 'rewritten' WHERE id = "
               "(SELECT min(id) FROM outbox_history)")  # fmt: skip
    first = scalar(db, "SELECT min(id) FROM outbox_seals")
    tamper(db, "DELETE FROM outbox_seals")  # ... and seal again, ids and all
    with db.begin() as conn:
        conn.execute(sa.text(f"ALTER TABLE outbox_seals ALTER COLUMN id RESTART WITH {first}"))
    seal_everything(db)
    assert check(db).seals >= 1  # the rewritten chain agrees with itself
    result = run(dsn, "audit", "verify", "--against", str(kept))
    assert result.exit_code == 1
    assert "rewritten after that digest was taken" in result.output


def test_rows_of_a_transaction_open_across_a_sealing_round_are_sealed_later_never_skipped(
    db: sa.Engine,
) -> None:
    enqueue(db, 5)
    with db.connect() as long_running:
        long_running.begin()
        with Session(bind=long_running) as session:
            [late] = outbox.enqueue_many(session, [outbox.NewJob("a.b", {"late": True})])
            session.flush()
        late_xid = long_running.execute(sa.text("SELECT pg_current_xact_id()::text::bigint"))
        late_xid = int(late_xid.scalar_one())
        enqueue(db, 5)  # committed after the open transaction began
        with db.connect() as conn:
            seal.seal_all(conn)
        assert scalar(db, "SELECT coalesce(max(xid_to), 0) FROM outbox_seals") <= late_xid
        long_running.commit()
    seal_everything(db)
    assert scalar(db, "SELECT count(*) FROM outbox_history") == 11
    assert check(db).rows == 11
    assert (
        scalar(
            db, "SELECT count(*) FROM outbox_seals WHERE :x >= xid_from AND :x < xid_to", x=late_xid
        )
        == 1
    )
    assert events(db, late.uuid) == ["enqueued"]


def test_relays_seal_by_themselves_and_export_the_lag(db: sa.Engine, dsn: str) -> None:
    registry = outbox.Registry()
    registry.register("a.b", lambda job: None)
    enqueue(db, 50)
    with running_relay(registry, dsn, seal_interval=timedelta(seconds=0.2)):
        wait_for(lambda: scalar(db, "SELECT count(*) FROM outbox_history WHERE event = "
                                    "'succeeded'") == 50, what="every job to succeed")  # fmt: skip
        wait_for(lambda: scalar(db, "SELECT coalesce(sum(row_count), 0) FROM outbox_seals")
                 == 150, what="the relay to seal all 150 rows")  # fmt: skip
    assert check(db).rows == 150
    with db.connect() as conn:
        assert seal.lag_seconds(conn) == 0


def test_a_relay_seals_as_soon_as_a_backlog_runs_dry_not_at_its_next_interval(
    db: sa.Engine, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a 30 s interval the relay seals once as it starts; once the backlog is drained it
    seals again within moments. (What a pass seals depends on every transaction of the
    server having ended, which other tests' may not have: the passes are what is timed.)"""
    passes: list[float] = []
    tick = Sealer.tick

    def timed(self: Sealer) -> float:
        passes.append(time.monotonic())
        return tick(self)

    monkeypatch.setattr(Sealer, "tick", timed)
    registry = outbox.Registry()
    registry.register("a.b", lambda job: None)
    enqueue(db, 2_000)
    with running_relay(registry, dsn, seal_interval=timedelta(seconds=30)):
        wait_for(lambda: scalar(db, "SELECT count(*) FROM outbox_jobs") == 0, timeout=30,
                 what="the backlog to drain")  # fmt: skip
        emptied = time.monotonic()
        wait_for(lambda: len(passes) >= 2, timeout=5, what="a sealing pass after the drain")
    assert passes[1] - emptied < 2


def test_two_sealers_at_once_never_fork_the_chain(db: sa.Engine) -> None:
    import threading

    enqueue(db, 10)
    errors: list[BaseException] = []

    def sealer() -> None:
        try:
            for _ in range(20):
                enqueue(db, 3)
                with db.connect() as conn:
                    seal.seal_all(conn)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=sealer) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    seal_everything(db)
    assert check(db).rows == scalar(db, "SELECT count(*) FROM outbox_history") == 190


# -- export and prune ------------------------------------------------------------------


@pytest.fixture
def sealed_history(db: sa.Engine) -> sa.Engine:
    for _ in range(4):
        enqueue(db, 25)
        seal_everything(db, max_rows=30)
    return db


def export_to(engine: sa.Engine, path: Path) -> retention.Export:
    with engine.connect() as conn, path.open("x", encoding="utf-8") as out:
        return retention.export(conn, out)


def prune(engine: sa.Engine, export: Path | None, older_than: float = 0) -> retention.Pruned:
    with engine.connect() as conn:
        return retention.prune(
            conn, export_path=export, older_than=timedelta(seconds=older_than), actor="ops"
        )


def test_prune_after_export_keeps_both_the_chain_and_the_export_verifiable(
    sealed_history: sa.Engine, dsn: str, tmp_path: Path
) -> None:
    db = sealed_history
    kept = digests_file(db, tmp_path / "digests.txt")
    exported = export_to(db, tmp_path / "history.jsonl")
    assert exported.rows == 100
    assert retention.verify_export(tmp_path / "history.jsonl").rows == 100
    done = prune(db, tmp_path / "history.jsonl")
    assert (done.rows, done.seals) == (100, len(exported.seals))
    assert scalar(db, "SELECT count(*) FROM outbox_history") == 0
    assert scalar(db, "SELECT actor FROM outbox_seals WHERE kind = 'prune'") == "ops"
    enqueue(db, 10)  # history goes on after the gap
    seal_everything(db)
    report = check(db, against=verify.read_digests(kept))
    assert (report.rows, report.pruned_seals, report.checked_against) == (
        10, len(exported.seals), 1
    )  # fmt: skip
    result = run(dsn, "audit", "verify", "--export", str(tmp_path / "history.jsonl"))
    assert result.exit_code == 0, result.output
    again = export_to(db, tmp_path / "later.jsonl")  # only what is left, prunes included
    assert again.rows == 10
    assert retention.verify_export(tmp_path / "later.jsonl").rows == 10


def test_export_lines_are_the_hashed_text_and_rows_are_readable_json(
    sealed_history: sa.Engine, tmp_path: Path
) -> None:
    export_to(sealed_history, tmp_path / "h.jsonl")
    lines = (tmp_path / "h.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines[1:] if not line.startswith('{"seal"')]
    assert {r["event"] for r in rows} == {"enqueued"}
    assert rows[0]["at"].endswith("Z")
    assert rows[0]["payload"] == {"n": 0}


def test_prune_refuses_a_changed_export_and_removes_nothing(
    sealed_history: sa.Engine, tmp_path: Path
) -> None:
    path = tmp_path / "h.jsonl"
    export_to(sealed_history, path)
    path.write_text(path.read_text().replace('"n": 3', '"n": 4', 1))
    with pytest.raises(VerificationError, match="the export was changed"):
        prune(sealed_history, path)
    assert scalar(sealed_history, "SELECT count(*) FROM outbox_history") == 100


def test_prune_refuses_when_the_database_no_longer_matches_the_export(
    sealed_history: sa.Engine, tmp_path: Path
) -> None:
    path = tmp_path / "h.jsonl"
    export_to(sealed_history, path)
    tamper(
        sealed_history, "DELETE FROM outbox_history WHERE id = (SELECT min(id) FROM outbox_history)"
    )
    with pytest.raises(VerificationError, match="prune refused"):
        prune(sealed_history, path)
    assert scalar(sealed_history, "SELECT count(*) FROM outbox_history") == 99


def test_prune_keeps_seals_younger_than_the_retention(
    sealed_history: sa.Engine, tmp_path: Path
) -> None:
    path = tmp_path / "h.jsonl"
    export_to(sealed_history, path)
    done = prune(sealed_history, path, older_than=3600)
    assert (done.rows, done.prune_seal) == (0, None)
    assert scalar(sealed_history, "SELECT count(*) FROM outbox_history") == 100


def test_prune_removes_expired_idempotency_keys_only(db: sa.Engine) -> None:
    enqueue(db, 1, idempotency_key="fresh")
    with db.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO outbox_idempotency (idempotency_key, job_uuid, expires_at) "
            "SELECT 'old-' || n, gen_random_uuid(), now() - interval '1 day' "
            "FROM generate_series(1, 25) AS n"
        ))  # fmt: skip
    assert prune(db, None).idempotency_keys == 25
    assert scalar(db, "SELECT array_agg(idempotency_key) FROM outbox_idempotency") == ["fresh"]


def test_history_deletes_stay_refused_outside_a_prune(sealed_history: sa.Engine) -> None:
    with sealed_history.connect() as conn, pytest.raises(sa.exc.DBAPIError, match="append-only"):
        conn.execute(sa.text("DELETE FROM outbox_history"))


# -- the commands and their failures -----------------------------------------------------


def test_audit_commands_on_sealed_history(
    sealed_history: sa.Engine, dsn: str, tmp_path: Path
) -> None:
    digest = run(dsn, "audit", "digest")
    assert digest.exit_code == 0
    seal_id, hex_digest = digest.output.split()[:2]
    assert len(hex_digest) == 64
    (tmp_path / "d.txt").write_text(digest.output)
    verified = run(dsn, "audit", "verify", "--against", str(tmp_path / "d.txt"), "--json")
    assert json.loads(verified.output)["checked_against"] == 1
    assert json.loads(verified.output)["last_seal"] == int(seal_id)
    table = run(dsn, "audit", "trail", "--type", "a.b", "--limit", "5")
    assert "5 history row(s)" in table.output
    rows = json.loads(run(dsn, "audit", "trail", "--format", "json").output)
    assert len(rows) == 100
    csv_out = run(dsn, "audit", "trail", "--format", "csv", "--since", "2000-01-01").output
    assert len(csv_out.splitlines()) == 101
    out = tmp_path / "x.jsonl"
    assert run(dsn, "audit", "export", "--out", str(out)).exit_code == 0
    pruned = run(dsn, "prune", "--export", str(out), "--older-than", "0s")
    assert "pruned 100 history rows" in pruned.output
    assert run(dsn, "audit", "verify").exit_code == 0


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["audit", "digest"], 1, "no seals yet"),
        (["audit", "verify", "--against", "/nonexistent/d.txt"], 1, "cannot read digests"),
        (["audit", "verify", "--export", "/nonexistent/x.jsonl"], 1, "cannot read the export"),
        (["audit", "verify", "--from-seal", "5", "--to-seal", "2"], 2, "--to-seal"),
        (["audit", "export", "--out", "{tmp}/x.jsonl"], 1, "nothing to export"),
        (["audit", "trail", "--since", "yesterday"], 2, "--since"),
        (["audit", "trail", "--since", "2026-01-02", "--until", "2026-01-01"], 1, "later than"),
        (["audit", "trail", "--job", "not-a-uuid"], 2, "--job"),
        (["audit", "redaction", "maybe"], 2, "maybe"),
        (["prune", "--older-than", "soon"], 2, "not a duration"),
        (["prune", "--export", "/nonexistent/x.jsonl"], 2, "does not exist"),
    ],
)  # fmt: skip
def test_audit_commands_fail_clearly(
    db: sa.Engine, dsn: str, tmp_path: Path, args: list[str], code: int, message: str
) -> None:
    result = run(dsn, *[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert result.exit_code == code, result.output
    assert message in result.output


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "holds no digests"),
        ("12 not-hex\n", "expected '<seal id> <64 hex digits>'"),
        (f"99999 {'ab' * 32}\n", "lacks: 99999"),
    ],
)
def test_verify_against_a_bad_digest_file_fails_clearly(
    sealed_history: sa.Engine, dsn: str, tmp_path: Path, content: str, message: str
) -> None:
    (tmp_path / "d.txt").write_text(content)
    result = run(dsn, "audit", "verify", "--against", str(tmp_path / "d.txt"))
    assert result.exit_code == 1
    assert message in result.output


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json\n", "not an outbox history export"),
        ('{"format": "outbox-history-export", "version": 1}\n', "holds no seals"),
        ('{"format": "outbox-history-export", "version": 1}\n{"id": 1}\n', "outside any seal"),
        ('{"format": "outbox-history-export", "version": 1}\n{"seal": {"id": "x"}}\n',
         "malformed"),
    ],
)  # fmt: skip
def test_verify_export_fails_clearly_on_what_is_not_an_export(
    tmp_path: Path, content: str, message: str
) -> None:
    (tmp_path / "x.jsonl").write_text(content)
    with pytest.raises(OutboxError, match=message):
        retention.verify_export(tmp_path / "x.jsonl")


def test_trail_refuses_naive_times(db: sa.Engine) -> None:
    from datetime import datetime

    with db.connect() as conn, pytest.raises(OutboxError, match="time zone"):
        trail.trail(conn, since=datetime(2026, 1, 1))


# -- roles and forged links ------------------------------------------------------------


def test_a_forged_prune_link_does_not_excuse_a_changed_row(db: sa.Engine) -> None:
    enqueue(db, 10)
    seal_everything(db)
    victim = scalar(db, "SELECT max(id) FROM outbox_history")
    tamper(db, f"UPDATE outbox_history SET key = 'forged' WHERE id = {victim}")
    with db.connect() as conn:  # a prune link that chains correctly over the changed range
        last = chain.latest_seal(conn)
        assert last is not None
        digest = chain.chain_digest("prune", last.digest, 0, last.xid_to, 10, last.digest)
        conn.execute(sa.text(
            "INSERT INTO outbox_seals (kind, xid_from, xid_to, row_count, rows_digest, "
            "previous_digest, digest) VALUES ('prune', 0, :to, 10, :d0, :d0, :d)"
        ), {"to": last.xid_to, "d0": last.digest, "d": digest})  # fmt: skip
        conn.commit()
    with pytest.raises(VerificationError, match=f"history row {victim}"):
        check(db)


def test_the_writer_may_seal_but_never_append_a_prune(db: sa.Engine, dsn: str) -> None:
    from tests.integration.test_append_only import as_role, login_role

    for writer in login_role(db, "outbox_writer"):
        engine = create_engine(as_role(dsn, writer), poolclass=sa.NullPool)
        try:
            with engine.connect() as conn, pytest.raises(sa.exc.ProgrammingError, match="policy"):
                conn.execute(sa.text(
                    "INSERT INTO outbox_seals (kind, xid_from, xid_to, row_count, rows_digest, "
                    "digest) VALUES ('prune', 0, 10, 0, '\\x00', '\\x00')"
                ))  # fmt: skip
            result = run(as_role(dsn, writer), "audit", "redaction", "on")
            assert result.exit_code == 1
            assert "only the owner" in result.output
        finally:
            engine.dispose()


def test_the_auditor_runs_the_audit_commands(sealed_history: sa.Engine, dsn: str) -> None:
    from tests.integration.test_append_only import as_role, login_role

    for auditor in login_role(sealed_history, "outbox_auditor"):
        result = run(as_role(dsn, auditor), "audit", "verify", "--json")
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["rows"] == 100
        trail_out = run(as_role(dsn, auditor), "audit", "trail", "--format", "json")
        assert len(json.loads(trail_out.output)) == 100


def test_a_revived_job_is_live_again_in_the_audit_view(db: sa.Engine) -> None:
    [handle] = enqueue(db, 1)
    with db.begin() as conn:
        conn.execute(sa.text("UPDATE outbox_jobs SET state = 'dead'"))
        conn.execute(sa.text(
            "INSERT INTO outbox_history (job_uuid, event, type, queue) "
            "VALUES (:u, 'dead', 'a.b', 'default')"
        ), {"u": handle.uuid})  # fmt: skip
    outcome = "SELECT outcome FROM outbox_audit_jobs WHERE uuid = :u"
    assert scalar(db, outcome, u=handle.uuid) == "dead"
    with db.begin() as conn:
        outbox.operator.revive(conn, [handle.uuid], actor="ops", reason="fixed the account")
    assert scalar(db, outcome, u=handle.uuid) == "live"
