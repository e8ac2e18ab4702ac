"""G7 by role: the application may only enqueue, only the relay's role and the owner seal,
the auditor only reads; a seal that could not have been made honestly is refused, and
`outbox audit verify` names one that got in behind the triggers as forged."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import secrets
import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from outbox_relay.sealer import Sealer
from sqlalchemy.orm import Session
from structlog.testing import capture_logs

import outbox
from outbox import migrate
from outbox.audit import chain, seal, verify
from outbox.audit.verify import VerificationError
from outbox.cli import cli
from outbox.database import create_engine, sqlalchemy_url
from outbox.errors import OutboxError
from tests.integration.relay_harness import SEALING, live_jobs, running_relay, scalar, wait_for

#: Far past any transaction this cluster has started.
FAR = 2**40
EMPTY = hashlib.sha256(b"").digest()


@dataclasses.dataclass(frozen=True)
class Roles:
    """Login roles made for this test session (roles are cluster-wide: unique names)."""

    app: str  # in outbox_app
    relay: str  # in outbox_writer
    auditor: str  # in outbox_auditor
    stranger: str  # in none of them; granted INSERT on outbox_seals by hand


def as_role(dsn: str, role: str) -> str:
    return sqlalchemy_url(dsn).set(username=role, password=None).render_as_string()


@pytest.fixture(scope="session")
def roles(engine: sa.Engine) -> Iterator[Roles]:
    tag = secrets.token_hex(4)
    made = Roles(*(f"outbox_t_{tag}_{n}" for n in ("app", "relay", "auditor", "stranger")))
    member_of = {made.app: "outbox_app", made.relay: "outbox_writer",
                 made.auditor: "outbox_auditor"}  # fmt: skip
    created: list[str] = []
    try:
        with engine.begin() as conn:
            for name, group in member_of.items():
                conn.execute(sa.text(f"CREATE ROLE {name} LOGIN IN ROLE {group}"))
                created.append(name)
            conn.execute(sa.text(f"CREATE ROLE {made.stranger} LOGIN"))
            created.append(made.stranger)
            conn.execute(sa.text(f"GRANT SELECT, INSERT ON outbox_seals TO {made.stranger}"))
            conn.execute(sa.text(f"GRANT SELECT ON outbox_history TO {made.stranger}"))
        yield made
    finally:
        with engine.begin() as conn:
            for name in created:
                conn.execute(sa.text(f"DROP OWNED BY {name}"))
                conn.execute(sa.text(f"DROP ROLE {name}"))


@contextlib.contextmanager
def login(dsn: str, role: str) -> Iterator[sa.Engine]:
    engine = create_engine(as_role(dsn, role), poolclass=sa.NullPool)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def app(db: sa.Engine, dsn: str, roles: Roles) -> Iterator[sa.Engine]:
    with login(dsn, roles.app) as engine:
        yield engine


@pytest.fixture
def relay(db: sa.Engine, dsn: str, roles: Roles) -> Iterator[sa.Engine]:
    with login(dsn, roles.relay) as engine:
        yield engine


def enqueue(engine: sa.Engine, count: int = 1, **options: Any) -> list[outbox.Enqueued]:
    with Session(engine) as session:
        handles = outbox.enqueue_many(
            session, [outbox.NewJob("pay.capture", {"n": n}, **options) for n in range(count)]
        )
        session.commit()
    return handles


def run(dsn: str, *args: str) -> Any:
    return CliRunner().invoke(cli, ["--dsn", dsn, *args], catch_exceptions=False)


def seal_everything(engine: sa.Engine) -> None:
    unsealed = """
        SELECT count(*) FROM outbox_history
        WHERE xid >= (SELECT coalesce(max(xid_to), 0) FROM outbox_seals WHERE kind = 'seal')
    """

    def sealed_all() -> bool:
        with engine.connect() as conn:
            seal.seal_all(conn)
        return bool(scalar(engine, unsealed) == 0)

    wait_for(sealed_all, timeout=SEALING, what="every history row to be sealed")


def chain_end(engine: sa.Engine) -> tuple[bytes | None, int]:
    with engine.connect() as conn, conn.begin():
        return chain.lock_chain(conn)


def horizon_past(engine: sa.Engine, xid: int) -> int:
    """The oldest running transaction, once it is past ``xid`` (other sessions of the cluster
    may hold it back a moment)."""

    def read() -> int | None:
        horizon = int(
            scalar(engine, "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
        )
        return horizon if horizon > xid else None

    return int(wait_for(read, what=f"every transaction up to {xid} to end"))


def behind_the_triggers(engine: sa.Engine, sql: str, **params: Any) -> None:
    """What a superuser can do: set the triggers aside for one transaction."""
    with engine.begin() as conn:
        conn.execute(sa.text("SET LOCAL session_replication_role = replica"))
        conn.execute(sa.text(sql), params)


INSERT_SEAL = """
    INSERT INTO outbox_seals (kind, xid_from, xid_to, row_count, rows_digest, previous_digest,
                              digest)
    VALUES (:kind, :xid_from, :xid_to, :row_count, :rows_digest, :previous, :digest)
"""


def linked_seal(
    previous: bytes | None, xid_from: int, xid_to: int, *, kind: str = "seal"
) -> dict[str, Any]:
    """A seal of no rows that links to ``previous`` with a correct digest: well formed."""
    digest = chain.chain_digest(kind, previous, xid_from, xid_to, 0, EMPTY)
    return {"kind": kind, "xid_from": xid_from, "xid_to": xid_to, "row_count": 0,
            "rows_digest": EMPTY, "previous": previous, "digest": digest}  # fmt: skip


# -- the application's role: enqueue, and nothing else ---------------------------------


def test_the_app_role_enqueues_one_job_and_many_with_keys_and_idempotency_keys(
    app: sa.Engine, db: sa.Engine
) -> None:
    with Session(app) as session:
        first = outbox.enqueue(session, "pay.capture", {"payment_id": 7}, key="acct:42",
                               idempotency_key="pay-7")  # fmt: skip
        again = outbox.enqueue(session, "pay.capture", {"payment_id": 7}, key="acct:42",
                               idempotency_key="pay-7")  # fmt: skip
        few = outbox.enqueue_many(session, [
            outbox.NewJob("pay.capture", {"n": n}, key=f"acct:{n % 3}", idempotency_key=f"f{n % 5}")
            for n in range(10)
        ])  # fmt: skip
        copied = outbox.enqueue_many(session, [  # the COPY path
            outbox.NewJob("pay.refund", {"n": n}, key=f"acct:{n % 7}",
                          idempotency_key=f"f{n}" if n < 10 else None)
            for n in range(600)
        ])  # fmt: skip
        session.commit()
    assert again == outbox.Enqueued(first.uuid, duplicate=True)
    assert [h.duplicate for h in few] == [False] * 5 + [True] * 5
    assert [h.uuid for h in few[5:]] == [h.uuid for h in few[:5]]
    assert all(h.duplicate for h in copied[:5])
    assert not any(h.duplicate for h in copied[10:])
    assert scalar(db, "SELECT count(*) FROM outbox_jobs") == 1 + 5 + 595


def test_the_app_role_may_check_the_schema_version(app: sa.Engine) -> None:
    with app.connect() as conn:
        migrate.check_at_head(conn)


def test_each_job_the_app_role_enqueues_has_its_enqueued_history_row_with_its_payload(
    app: sa.Engine, db: sa.Engine
) -> None:
    enqueue(app, 3, key="acct:1")
    enqueue(app, 600, delay=60)
    with db.connect() as conn:
        mismatched = conn.execute(sa.text("""
            SELECT count(*) FROM outbox_jobs j
            FULL JOIN outbox_history h ON h.job_uuid = j.uuid
            WHERE h.id IS NULL OR j.uuid IS NULL OR h.event <> 'enqueued'
               OR (h.type, h.queue, h.key, h.attempt, h.payload, h.run_at)
                  IS DISTINCT FROM (j.type, j.queue, j.key, 0, j.payload, j.run_at)
        """)).scalar()  # fmt: skip
        in_order = conn.execute(sa.text("""
            SELECT array_agg(h.job_uuid ORDER BY h.id) = array_agg(j.uuid ORDER BY j.id)
            FROM outbox_jobs j JOIN outbox_history h ON h.job_uuid = j.uuid
        """)).scalar()  # fmt: skip
    assert mismatched == 0
    assert in_order
    assert scalar(db, "SELECT count(*) FROM outbox_history") == 603


def test_a_job_the_app_role_inserts_by_hand_still_gets_its_enqueued_row(
    app: sa.Engine, db: sa.Engine
) -> None:
    with app.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO outbox_jobs (uuid, type, queue, payload) "
            "VALUES (gen_random_uuid(), 'a.b', 'default', '{\"by\": \"hand\"}')"
        ))  # fmt: skip
    assert scalar(db, "SELECT event FROM outbox_history") == "enqueued"
    assert scalar(db, "SELECT payload ->> 'by' FROM outbox_history") == "hand"


REFUSED_TO_THE_APP = {
    "update a job's payload": "UPDATE outbox_jobs SET payload = '{\"amount\": 1000000}'",
    "update a job's state": "UPDATE outbox_jobs SET state = 'dead'",
    "delete a live job": "DELETE FROM outbox_jobs",
    "write a cancelled row": "INSERT INTO outbox_history (job_uuid, event, type, queue, actor) "
                             "VALUES (gen_random_uuid(), 'cancelled', 'a.b', 'default', 'ops')",
    "write an enqueued row": "INSERT INTO outbox_history (job_uuid, event, type, queue) "
                             "VALUES (gen_random_uuid(), 'enqueued', 'a.b', 'default')",
    "read history": "SELECT count(*) FROM outbox_history",
    "insert a seal": "INSERT INTO outbox_seals (kind, xid_from, xid_to, row_count, rows_digest, "
                     "digest) VALUES ('seal', 0, 10, 0, '\\x00', '\\x00')",
    "insert a dead job": "INSERT INTO outbox_jobs (uuid, type, queue, payload, state) "
                         "VALUES (gen_random_uuid(), 'a.b', 'default', '{}', 'dead')",
    "insert a running job": "INSERT INTO outbox_jobs (uuid, type, queue, payload, state, relay, "
                            "lease_expires_at) VALUES (gen_random_uuid(), 'a.b', 'default', "
                            "'{}', 'running', 'r', now() + interval '1h')",
    "insert a job mid-attempt": "INSERT INTO outbox_jobs (uuid, type, queue, payload, attempt) "
                                "VALUES (gen_random_uuid(), 'a.b', 'default', '{}', 3)",
    "insert an isolated job": "INSERT INTO outbox_jobs (uuid, type, queue, payload, isolated) "
                              "VALUES (gen_random_uuid(), 'a.b', 'default', '{}', true)",
    "back-date a job": "INSERT INTO outbox_jobs (uuid, type, queue, payload, enqueued_at) "
                       "VALUES (gen_random_uuid(), 'a.b', 'default', '{}', '2001-01-01Z')",
    "forget an idempotency key": "DELETE FROM outbox_idempotency",
    "set the history trigger aside": "ALTER TABLE outbox_jobs DISABLE TRIGGER USER",
    "set every trigger aside": "SET session_replication_role = replica",
}  # fmt: skip


@pytest.mark.parametrize("change", REFUSED_TO_THE_APP.values(), ids=REFUSED_TO_THE_APP.keys())
def test_the_app_role_can_do_nothing_but_enqueue(
    app: sa.Engine, db: sa.Engine, change: str
) -> None:
    enqueue(app, 1, idempotency_key="k")
    before = scalar(db, "SELECT row(j.*)::text FROM outbox_jobs j")
    with app.connect() as conn, pytest.raises(sa.exc.ProgrammingError, match=r"permission|owner"):
        conn.execute(sa.text(change))
    assert scalar(db, "SELECT row(j.*)::text FROM outbox_jobs j") == before
    assert scalar(db, "SELECT count(*) FROM outbox_history") == 1
    assert scalar(db, "SELECT count(*) FROM outbox_idempotency") == 1


# -- seals: the relay's role and the owner only, and only honest ones ------------------


def test_a_seal_reaching_past_the_snapshot_is_refused_even_for_the_relay_role(
    app: sa.Engine, relay: sa.Engine, db: sa.Engine
) -> None:
    enqueue(app, 3)
    seal_everything(relay)
    previous, sealed_to = chain_end(db)
    with relay.connect() as conn, pytest.raises(sa.exc.DBAPIError, match="past the oldest"):
        conn.execute(sa.text(INSERT_SEAL), linked_seal(previous, sealed_to, FAR))
    # ... so sealing and verification carry on
    enqueue(app, 3)
    seal_everything(relay)
    with db.connect() as conn:
        assert verify.verify(conn).rows == 6


@pytest.mark.parametrize(
    ("forge", "message"),
    [
        ("unlinked", "does not link to the end of the chain"),
        ("gap", "starts at transaction"),
        ("overlap", "starts at transaction"),
        ("bad digest", "digest does not match"),
        ("prune of unsealed history", "past the sealed history"),
    ],
)
def test_a_seal_that_does_not_continue_the_chain_is_refused(
    app: sa.Engine, relay: sa.Engine, db: sa.Engine, forge: str, message: str
) -> None:
    enqueue(app, 3)
    seal_everything(relay)
    enqueue(app, 2)  # settled, not yet sealed: two transactions
    enqueue(app, 1)
    previous, sealed_to = chain_end(db)
    horizon = horizon_past(db, sealed_to + 1)
    fields = {
        "unlinked": linked_seal(EMPTY, sealed_to, horizon),
        "gap": linked_seal(previous, sealed_to + 1, horizon),
        "overlap": linked_seal(previous, 0, horizon),
        "bad digest": {**linked_seal(previous, sealed_to, horizon), "digest": EMPTY},
        "prune of unsealed history": linked_seal(previous, 0, horizon, kind="prune"),
    }[forge]
    # the owner: row-level security lets only the owner append prunes
    engine = db if forge.startswith("prune") else relay
    with engine.connect() as conn, pytest.raises(sa.exc.DBAPIError, match=message):
        conn.execute(sa.text(INSERT_SEAL), fields)
    seal_everything(relay)
    with db.connect() as conn:
        assert verify.verify(conn).rows == 6


def test_only_the_relay_role_and_the_owner_append_seals(
    app: sa.Engine, db: sa.Engine, dsn: str, roles: Roles
) -> None:
    enqueue(app, 1)
    horizon = horizon_past(db, 0)
    well_formed = linked_seal(None, 0, horizon)
    refusals = {roles.stranger: "only the relay's role", roles.auditor: "permission",
                roles.app: "permission"}  # fmt: skip
    for role, message in refusals.items():
        with (
            login(dsn, role) as engine,
            engine.connect() as conn,
            pytest.raises(sa.exc.ProgrammingError, match=message),
        ):
            conn.execute(sa.text(INSERT_SEAL), well_formed)
    assert scalar(db, "SELECT count(*) FROM outbox_seals") == 0
    seal_everything(db)  # the owner


# -- verification names a forged seal ----------------------------------------------------


def test_verify_names_a_seal_forged_behind_the_triggers(
    app: sa.Engine, relay: sa.Engine, db: sa.Engine, dsn: str, roles: Roles
) -> None:
    enqueue(app, 3)
    seal_everything(relay)
    previous, sealed_to = chain_end(db)
    behind_the_triggers(db, INSERT_SEAL, **linked_seal(previous, sealed_to, FAR))
    forged = scalar(db, "SELECT max(id) FROM outbox_seals")
    enqueue(app, 3)  # rows inside the forged range: they are not to blame
    with db.connect() as conn, pytest.raises(VerificationError, match=f"seal {forged} is forged"):
        verify.verify(conn)
    result = run(as_role(dsn, roles.auditor), "audit", "verify")
    assert result.exit_code == 1
    assert f"seal {forged} is forged or invalid" in result.output
    assert "history row" not in result.output
    with relay.connect() as conn, pytest.raises(OutboxError, match=f"seal {forged}"):
        seal.seal_all(conn)  # says why it cannot seal, instead of sealing nothing for ever
    # A relay's sealer says so too, and lives on (its relay keeps running jobs).
    sealer = Sealer(relay, timedelta(seconds=0.1), "test:1:a")
    with capture_logs() as logs:
        thread = threading.Thread(target=sealer.run, daemon=True)
        thread.start()
        try:
            wait_for(lambda: any("cannot be carried on" in e["event"] for e in logs),
                     what="the sealer to report the broken chain")  # fmt: skip
            assert thread.is_alive()
        finally:
            sealer.stop()
            thread.join(10)


def test_verify_names_a_seal_that_breaks_continuity_as_forged(
    app: sa.Engine, relay: sa.Engine, db: sa.Engine
) -> None:
    enqueue(app, 3)
    seal_everything(relay)
    enqueue(app, 2)
    enqueue(app, 1)
    previous, sealed_to = chain_end(db)
    horizon = horizon_past(db, sealed_to + 1)
    behind_the_triggers(db, INSERT_SEAL, **linked_seal(previous, sealed_to + 1, horizon))
    forged = scalar(db, "SELECT max(id) FROM outbox_seals")
    expected = f"seal {forged} is forged or invalid: .*a range is missing"
    with db.connect() as conn, pytest.raises(VerificationError, match=expected):
        verify.verify(conn)


# -- the three roles together ------------------------------------------------------------


def test_a_relay_with_only_the_writer_role_runs_and_seals_what_the_app_role_enqueued(
    app: sa.Engine, db: sa.Engine, dsn: str, roles: Roles
) -> None:
    registry = outbox.Registry()
    registry.register("pay.capture", lambda job: None)
    enqueue(app, 3, key="acct:1")
    enqueue(app, 600)
    with running_relay(registry, as_role(dsn, roles.relay)):
        wait_for(lambda: live_jobs(db) == 0, what="every job to end")
        wait_for(lambda: scalar(db, "SELECT count(*) FROM outbox_seals") >= 1, what="a seal")
    assert scalar(db, "SELECT count(*) FROM outbox_history WHERE event = 'succeeded'") == 603
    result = run(as_role(dsn, roles.auditor), "audit", "verify", "--json")
    assert result.exit_code == 0, result.output
