"""Roles that cannot forge history (G7): an enqueue-only role for applications, history's
`enqueued` rows written by the database, and seals checked before they join the chain.

Until now applications and relays shared `outbox_writer`, which may write any history row,
change or delete live jobs and append seals: an application could forge a `cancelled` row,
delete a job without a trace, or append a well-formed seal reaching far past every
transaction, after which sealing stopped and verification blamed innocent history rows.

- `outbox_app` may insert jobs (only the columns an enqueue sets, never a state, an attempt
  or a lease) and record idempotency keys, and nothing else: no update or delete of jobs,
  no privilege at all on history or seals. `outbox_writer` stays the relays' role.
- The `enqueued` history row of every new job is appended by a statement-level trigger on
  `outbox_jobs` (SECURITY DEFINER, owned by the schema's owner, search_path pinned), from
  the inserted rows themselves: no role can skip it or word it differently.
- A BEFORE INSERT trigger on `outbox_seals` refuses a link that reaches past the oldest
  running transaction, does not continue the chain (previous digest, start, a prune beyond
  the sealed history), or whose digest does not match its fields, and any insert by a role
  other than the owner or a member of `outbox_writer`.

Creating a role needs CREATEROLE; where the migrating role lacks it, `outbox_app` is skipped
with a notice and the operator creates it (docs/howto/audit-roles.md).

Revision ID: outbox_0008
Revises: outbox_0007
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "outbox_0008"
down_revision: str | None = "outbox_0007"
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None

APP, WRITER = "outbox_app", "outbox_writer"
#: What an enqueue sets; the rest (state, attempt, lease, relay, isolated, enqueued_at, id)
#: is the database's or the relay's.
JOB_COLUMNS = "uuid, type, queue, key, idempotency_key, payload, priority, run_at, max_attempts"
FUNCTIONS = ("outbox_history_enqueued()", "outbox_check_seal()")


def _pin_search_path(function: str) -> None:
    """Resolve names in the schema the tables live in, never in one a caller put first."""
    op.execute(
        f"""
        DO $$
        BEGIN
            EXECUTE format('ALTER FUNCTION {function} SET search_path = pg_catalog, %I, pg_temp',
                           current_schema());
        END
        $$
        """
    )


def upgrade() -> None:
    # G7: a job's `enqueued` row, in the transaction that inserts the job, from its own
    # values. Once per statement over the inserted rows (a transition table), so a bulk
    # enqueue by COPY pays one INSERT ... SELECT, not a call per row.
    op.execute(
        """
        CREATE FUNCTION outbox_history_enqueued() RETURNS trigger
        LANGUAGE plpgsql SECURITY DEFINER AS $$
        BEGIN
            INSERT INTO outbox_history (job_uuid, event, type, queue, key, attempt, payload,
                                        run_at)
            SELECT uuid, 'enqueued', type, queue, key, attempt, payload, run_at
            FROM enqueued;
            RETURN NULL;
        END
        $$
        """
    )
    _pin_search_path("outbox_history_enqueued()")
    op.execute(
        "CREATE TRIGGER outbox_jobs_enqueued AFTER INSERT ON outbox_jobs "
        "REFERENCING NEW TABLE AS enqueued "
        "FOR EACH STATEMENT EXECUTE FUNCTION outbox_history_enqueued()"
    )

    # G7: only a link that an honest sealer or prune could have written joins the chain.
    # Run as the inserting role (current_user is who asks). The chain's append lock makes
    # the end read here the end the new link follows.
    op.execute(
        f"""
        CREATE FUNCTION outbox_check_seal() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE
            horizon bigint := pg_snapshot_xmin(pg_current_snapshot())::text::bigint;
            owner boolean := pg_has_role(
                current_user, (SELECT relowner FROM pg_class WHERE oid = TG_RELID), 'USAGE');
            chain_end bytea;
            sealed_to bigint;
        BEGIN
            IF NOT owner AND NOT EXISTS (
                SELECT FROM pg_roles
                WHERE rolname = '{WRITER}' AND pg_has_role(current_user, oid, 'USAGE')
            ) THEN
                RAISE EXCEPTION 'outbox: only the relay''s role ({WRITER}) and the owner of '
                    'outbox_seals append to the seal chain, not %', current_user
                    USING ERRCODE = 'insufficient_privilege',
                          HINT = 'see docs/howto/audit-roles.md';
            END IF;
            IF NEW.kind <> 'seal' AND NOT owner
               AND NOT (SELECT rolbypassrls FROM pg_roles WHERE rolname = current_user) THEN
                RETURN NEW;  -- the policy outbox_seals_seal_only refuses it, by name
            END IF;
            PERFORM pg_advisory_xact_lock(2829, 5);
            SELECT digest INTO chain_end FROM outbox_seals ORDER BY id DESC LIMIT 1;
            SELECT xid_to INTO sealed_to FROM outbox_seals WHERE kind = 'seal'
            ORDER BY xid_from DESC LIMIT 1;
            sealed_to := coalesce(sealed_to, 0);
            IF NEW.xid_to > horizon THEN
                RAISE EXCEPTION 'outbox: % refused: it reaches transaction %, past the oldest '
                    'transaction still running (%): only what has ended can be sealed',
                    NEW.kind, NEW.xid_to - 1, horizon
                    USING ERRCODE = 'check_violation';
            END IF;
            IF NEW.previous_digest IS DISTINCT FROM chain_end THEN
                RAISE EXCEPTION 'outbox: % refused: it does not link to the end of the chain '
                    '(its previous digest is %, the last link''s %)', NEW.kind,
                    coalesce(encode(NEW.previous_digest, 'hex'), 'none'),
                    coalesce(encode(chain_end, 'hex'), 'none')
                    USING ERRCODE = 'check_violation';
            END IF;
            IF NEW.kind = 'seal' AND NEW.xid_from <> sealed_to THEN
                RAISE EXCEPTION 'outbox: seal refused: it starts at transaction %, but history '
                    'is sealed up to %', NEW.xid_from, sealed_to
                    USING ERRCODE = 'check_violation';
            END IF;
            IF NEW.kind = 'prune' AND NEW.xid_to > sealed_to THEN
                RAISE EXCEPTION 'outbox: prune refused: it reaches transaction %, past the '
                    'sealed history (up to %)', NEW.xid_to - 1, sealed_to
                    USING ERRCODE = 'check_violation';
            END IF;
            -- chain_digest in outbox/seal.py
            IF NEW.digest IS DISTINCT FROM sha256(
                convert_to('outbox seal v1' || chr(10) || NEW.kind || chr(10), 'UTF8')
                || coalesce(nullif(NEW.previous_digest, ''::bytea), decode(repeat('00', 32), 'hex'))
                || int8send(NEW.xid_from) || int8send(NEW.xid_to) || int8send(NEW.row_count)
                || NEW.rows_digest
            ) THEN
                RAISE EXCEPTION 'outbox: % refused: its digest does not match its fields',
                    NEW.kind USING ERRCODE = 'check_violation';
            END IF;
            RETURN NEW;
        END
        $$
        """
    )
    _pin_search_path("outbox_check_seal()")
    op.execute(
        "CREATE TRIGGER outbox_seals_checked BEFORE INSERT ON outbox_seals "
        "FOR EACH ROW EXECUTE FUNCTION outbox_check_seal()"
    )
    for function in FUNCTIONS:
        op.execute(f"REVOKE ALL ON FUNCTION {function} FROM PUBLIC")

    op.execute(
        f"""
        DO $$
        BEGIN
            IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{APP}') THEN
                BEGIN
                    CREATE ROLE {APP} NOLOGIN;
                EXCEPTION WHEN duplicate_object OR unique_violation THEN
                    NULL;  -- roles are cluster-wide: a migration of another database won
                END;
            END IF;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE NOTICE 'outbox: no CREATEROLE: create role {APP} by hand';
        END
        $$
        """
    )
    op.execute(
        f"""
        DO $$
        BEGIN
            IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{APP}') THEN
                GRANT INSERT ({JOB_COLUMNS}) ON outbox_jobs TO {APP};
                -- the idempotency upsert (G5): insert a key, or renew one past its window
                GRANT SELECT, INSERT (idempotency_key, job_uuid, expires_at),
                    UPDATE (job_uuid, created_at, expires_at) ON outbox_idempotency TO {APP};
                -- absent where outbox's migrations are part of the application's history
                IF to_regclass('outbox_alembic_version') IS NOT NULL THEN
                    GRANT SELECT ON outbox_alembic_version TO {APP};
                END IF;
            END IF;
        END
        $$
        """
    )


def downgrade() -> None:
    op.execute(
        f"""
        DO $$
        BEGIN
            IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{APP}') THEN
                REVOKE ALL ON outbox_jobs, outbox_idempotency FROM {APP};
                IF to_regclass('outbox_alembic_version') IS NOT NULL THEN
                    REVOKE ALL ON outbox_alembic_version FROM {APP};
                END IF;
            END IF;
        END
        $$
        """
    )
    op.execute("DROP TRIGGER outbox_seals_checked ON outbox_seals")
    op.execute("DROP TRIGGER outbox_jobs_enqueued ON outbox_jobs")
    for function in FUNCTIONS:
        op.execute(f"DROP FUNCTION {function}")
    # The role is cluster-wide and may serve other databases: it stays.
