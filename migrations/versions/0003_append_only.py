"""History and seals are append-only (G7): triggers refuse UPDATE, DELETE and TRUNCATE, and two
roles the operator can grant: one that writes jobs but may only append history, one that reads.

Creating roles needs CREATEROLE; where the migrating role lacks it, the roles are skipped with
a notice and the operator creates them (docs/howto/audit-roles.md).

Revision ID: outbox_0003
Revises: outbox_0002
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "outbox_0003"
down_revision: str | None = "outbox_0002"
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None

APPEND_ONLY = ("outbox_history", "outbox_seals")
WRITER, AUDITOR = "outbox_writer", "outbox_auditor"


def upgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION outbox_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'outbox: % is append-only: % refused', TG_TABLE_NAME, TG_OP
                USING ERRCODE = 'insufficient_privilege',
                      HINT = 'history is kept whole; see docs/howto/audit-roles.md';
        END
        $$
        """
    )
    for table in APPEND_ONLY:
        op.execute(
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION outbox_refuse_change()"
        )
        op.execute(
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION outbox_refuse_change()"
        )
    op.execute(
        f"""
        DO $$
        DECLARE
            name text;
        BEGIN
            FOREACH name IN ARRAY ARRAY['{WRITER}', '{AUDITOR}'] LOOP
                IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = name) THEN
                    BEGIN
                        EXECUTE format('CREATE ROLE %I NOLOGIN', name);
                    EXCEPTION WHEN duplicate_object OR unique_violation THEN
                        NULL;  -- roles are cluster-wide: a migration of another database won
                    END;
                END IF;
            END LOOP;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE NOTICE 'outbox: no CREATEROLE: create roles {WRITER} and {AUDITOR} by hand';
        END
        $$
        """
    )
    op.execute(
        f"""
        DO $$
        BEGIN
            IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{WRITER}') THEN
                GRANT SELECT, INSERT, UPDATE, DELETE
                    ON outbox_jobs, outbox_idempotency, outbox_relays TO {WRITER};
                GRANT SELECT, INSERT ON outbox_history, outbox_seals TO {WRITER};
                -- absent where outbox's migrations are part of the application's history
                IF to_regclass('outbox_alembic_version') IS NOT NULL THEN
                    GRANT SELECT ON outbox_alembic_version TO {WRITER};
                END IF;
            END IF;
            IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{AUDITOR}') THEN
                GRANT SELECT ON outbox_jobs, outbox_history, outbox_seals, outbox_idempotency,
                    outbox_relays TO {AUDITOR};
            END IF;
        END
        $$
        """
    )


def downgrade() -> None:
    for table in APPEND_ONLY:
        op.execute(f"DROP TRIGGER {table}_no_truncate ON {table}")
        op.execute(f"DROP TRIGGER {table}_append_only ON {table}")
    op.execute("DROP FUNCTION outbox_refuse_change()")
    # The roles are cluster-wide and may serve other databases: they stay.
