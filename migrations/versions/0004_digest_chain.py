"""The digest chain (G7): seals over transaction-id ranges of history, the canonical form each
history row is hashed in, payload redaction, pruning of exported seals, and the auditors' views.

History rows are sealed by the transaction that wrote them, never by their id: a row whose
transaction id is below the oldest snapshot's xmin can no longer appear or change, whatever its
id, so rows committed late by long transactions are sealed later, never skipped.

Revision ID: outbox_0004
Revises: outbox_0003
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import BYTEA

revision: str = "outbox_0004"
down_revision: str | None = "outbox_0003"
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None

WRITER, AUDITOR = "outbox_writer", "outbox_auditor"
HISTORY_COLUMNS = (
    "job_uuid, event, type, queue, key, attempt, payload, run_at, relay, actor, reason, error, "
    "duration_ms"
)
SEAL_COLUMNS = (
    "kind, xid_from, xid_to, row_count, first_history_id, last_history_id, rows_digest, "
    "row_hashes, previous_digest, digest, actor"
)
UTC = "AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'"


def upgrade() -> None:
    # No relay sealed anything before this revision: the table is recreated for xid ranges.
    op.drop_table("outbox_seals")
    op.create_table(
        "outbox_seals",
        sa.Column("id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
        sa.Column("kind", sa.Text, nullable=False, server_default="seal"),
        sa.Column("xid_from", sa.BigInteger, nullable=False),
        sa.Column("xid_to", sa.BigInteger, nullable=False),
        sa.Column("row_count", sa.BigInteger, nullable=False),
        sa.Column("first_history_id", sa.BigInteger),
        sa.Column("last_history_id", sa.BigInteger),
        sa.Column("rows_digest", BYTEA, nullable=False),
        # The first 8 bytes of each row's SHA-256 in canonical order: names a changed row.
        sa.Column("row_hashes", BYTEA),
        sa.Column("previous_digest", BYTEA),
        sa.Column("digest", BYTEA, nullable=False),
        sa.Column("actor", sa.Text),
        sa.Column(
            "sealed_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")
        ),
        sa.CheckConstraint("kind IN ('seal', 'prune')", name="outbox_seals_kind"),
        sa.CheckConstraint("xid_from < xid_to", name="outbox_seals_range"),
        sa.CheckConstraint("row_count >= 0", name="outbox_seals_row_count"),
    )
    # One seal per range start: two sealers can never fork the chain.
    op.create_index(
        "outbox_seals_from_idx",
        "outbox_seals",
        ["xid_from"],
        unique=True,
        postgresql_where=sa.text("kind = 'seal'"),
    )
    _seal_triggers()

    op.add_column("outbox_history", sa.Column("payload_sha256", BYTEA))
    # Only the table's owner (`outbox prune`) appends prune links; everyone else only seals.
    op.execute("ALTER TABLE outbox_seals ENABLE ROW LEVEL SECURITY")
    op.execute("CREATE POLICY outbox_seals_read ON outbox_seals FOR SELECT USING (true)")
    op.execute(
        "CREATE POLICY outbox_seals_seal_only ON outbox_seals FOR INSERT WITH CHECK (kind = 'seal')"
    )
    # The sealer reads history by transaction id, just behind the writers. A B-tree, not a BRIN:
    # a BRIN's newest ranges stay unsummarised until a vacuum, and every read of them would
    # scan all history written since.
    op.create_index("outbox_history_xid_idx", "outbox_history", ["xid"])

    # DELETE is refused, except for `outbox prune`, which names the sealed, exported range it
    # removes for its own transaction and records the prune in the seal chain.
    op.execute(
        """
        CREATE OR REPLACE FUNCTION outbox_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'DELETE' AND TG_TABLE_NAME = 'outbox_history' THEN
                IF OLD.xid < coalesce(
                    nullif(current_setting('outbox.prune_below_xid', true), '')::bigint, 0) THEN
                    RETURN OLD;
                END IF;
            END IF;
            RAISE EXCEPTION 'outbox: % is append-only: % refused', TG_TABLE_NAME, TG_OP
                USING ERRCODE = 'insufficient_privilege',
                      HINT = 'history is kept whole; see docs/howto/audit-roles.md';
        END
        $$
        """
    )

    # Payload redaction, off until the operator turns it on (`outbox audit redaction on`):
    # history then keeps the payload's SHA-256 instead of the payload.
    op.execute(
        """
        CREATE FUNCTION outbox_redact_payload() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            NEW.payload_sha256 := sha256(convert_to(NEW.payload::text, 'UTF8'));
            NEW.payload := NULL;
            RETURN NEW;
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER outbox_history_redact_payload BEFORE INSERT ON outbox_history "
        "FOR EACH ROW WHEN (NEW.payload IS NOT NULL) EXECUTE FUNCTION outbox_redact_payload()"
    )
    op.execute("ALTER TABLE outbox_history DISABLE TRIGGER outbox_history_redact_payload")

    # The canonical form of a history row: the text of one JSON object, keys in this fixed
    # order, timestamps in UTC with microseconds, durations as numerics with three decimals,
    # payload and error as jsonb prints them. It does not depend on the session's time zone,
    # date style or float settings. `outbox audit export` writes exactly this text.
    op.execute(
        f"""
        CREATE FUNCTION outbox_history_canonical(h outbox_history) RETURNS text
        LANGUAGE sql STABLE PARALLEL SAFE AS $$
            SELECT json_build_object(
                'id', h.id, 'xid', h.xid, 'job', h.job_uuid, 'event', h.event,
                'type', h.type, 'queue', h.queue, 'key', h.key, 'attempt', h.attempt,
                'payload', h.payload, 'payload_sha256', encode(h.payload_sha256, 'hex'),
                'run_at', to_char(h.run_at {UTC}),
                'relay', h.relay, 'actor', h.actor, 'reason', h.reason, 'error', h.error,
                'duration_ms', round(h.duration_ms::numeric, 3),
                'at', to_char(h.at {UTC})
            )::text
        $$
        """
    )

    op.execute(
        """
        CREATE VIEW outbox_audit_jobs AS
        SELECT job_uuid AS uuid,
               min(type) AS type,
               min(queue) AS queue,
               min(key) AS key,
               min(at) FILTER (WHERE event = 'enqueued') AS enqueued_at,
               -- the last ending event; a revival makes the job live again
               coalesce(nullif((array_agg(event ORDER BY id DESC) FILTER (
                   WHERE event IN ('succeeded', 'dead', 'cancelled', 'revived')))[1], 'revived'),
                   'live') AS outcome,
               count(*) FILTER (WHERE event = 'claimed') AS attempts,
               count(*) FILTER (WHERE event = 'failed') AS failures,
               count(*) FILTER (WHERE event = 'rescued') AS rescues,
               min(at) FILTER (WHERE event = 'claimed') AS first_claimed_at,
               max(at) FILTER (WHERE event IN ('succeeded', 'dead', 'cancelled')) AS ended_at,
               sum(duration_ms) AS handler_ms,
               max(duration_ms) AS longest_attempt_ms,
               array_agg(DISTINCT relay) FILTER (WHERE relay IS NOT NULL) AS relays,
               array_agg(DISTINCT actor) FILTER (WHERE actor IS NOT NULL) AS actors
        FROM outbox_history
        GROUP BY job_uuid
        """
    )
    op.execute(
        """
        CREATE VIEW outbox_audit_daily AS
        SELECT date_trunc('day', at AT TIME ZONE 'UTC')::date AS day,
               type,
               event,
               count(*) AS events,
               round(avg(duration_ms)::numeric, 3) AS mean_ms,
               max(duration_ms) AS max_ms
        FROM outbox_history
        GROUP BY 1, 2, 3
        """
    )

    op.execute(
        f"""
        DO $$
        BEGIN
            IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{WRITER}') THEN
                -- The writer names what it records, never when or in which transaction.
                REVOKE INSERT ON outbox_history FROM {WRITER};
                GRANT INSERT ({HISTORY_COLUMNS}) ON outbox_history TO {WRITER};
                GRANT SELECT ON outbox_seals TO {WRITER};
                GRANT INSERT ({SEAL_COLUMNS}) ON outbox_seals TO {WRITER};
                GRANT SELECT ON outbox_audit_jobs, outbox_audit_daily TO {WRITER};
            END IF;
            IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{AUDITOR}') THEN
                GRANT SELECT ON outbox_seals, outbox_audit_jobs, outbox_audit_daily
                    TO {AUDITOR};
                -- `outbox audit` checks the schema version before it reads
                IF to_regclass('outbox_alembic_version') IS NOT NULL THEN
                    GRANT SELECT ON outbox_alembic_version TO {AUDITOR};
                END IF;
            END IF;
        END
        $$
        """
    )


def downgrade() -> None:
    op.execute("DROP VIEW outbox_audit_daily")
    op.execute("DROP VIEW outbox_audit_jobs")
    op.execute("DROP FUNCTION outbox_history_canonical(outbox_history)")
    op.execute("DROP TRIGGER outbox_history_redact_payload ON outbox_history")
    op.execute("DROP FUNCTION outbox_redact_payload()")
    op.drop_index("outbox_history_xid_idx", "outbox_history")
    op.drop_column("outbox_history", "payload_sha256")
    op.drop_table("outbox_seals")
    op.create_table(
        "outbox_seals",
        sa.Column("id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
        sa.Column("first_history_id", sa.BigInteger, nullable=False),
        sa.Column("last_history_id", sa.BigInteger, nullable=False),
        sa.Column("row_count", sa.BigInteger, nullable=False),
        sa.Column("digest", BYTEA, nullable=False),
        sa.Column("previous_digest", BYTEA),
        sa.Column(
            "sealed_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")
        ),
        sa.CheckConstraint("first_history_id <= last_history_id", name="outbox_seals_range"),
    )
    _seal_triggers()


def _seal_triggers() -> None:
    op.execute(
        "CREATE TRIGGER outbox_seals_append_only BEFORE UPDATE OR DELETE ON outbox_seals "
        "FOR EACH ROW EXECUTE FUNCTION outbox_refuse_change()"
    )
    op.execute(
        "CREATE TRIGGER outbox_seals_no_truncate BEFORE TRUNCATE ON outbox_seals "
        "FOR EACH STATEMENT EXECUTE FUNCTION outbox_refuse_change()"
    )
