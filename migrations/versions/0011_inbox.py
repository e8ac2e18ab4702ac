"""The inbox: consumers remember the message ids they applied, to apply each one once.

Publishing is at least once: a relay killed between the broker's acknowledgement and the
job's completion publishes the message again, under the same id (the job's uuid). A consumer
that records the id in the transaction that applies the message (``outbox.inbox``) sees the
second copy as already received, so the effect happens once.

- `outbox_inbox`: one row per (consumer, message id) received, with the database's time of
  receipt; the primary key is what makes a second receipt, even a concurrent one, a no-op.
  `outbox prune` removes rows older than the inbox retention (`OUTBOX_INBOX_RETENTION`, never
  shorter than the idempotency retention of G5), by the index on `received_at`.

Applications (`outbox_app`) are consumers: they insert and read receipts, and change or
delete none. Relays (`outbox_writer`) may consume and prune; auditors read.

Revision ID: outbox_0011
Revises: outbox_0010
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "outbox_0011"
down_revision: str | None = "outbox_0010"
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None

APP, WRITER, AUDITOR = "outbox_app", "outbox_writer", "outbox_auditor"


def upgrade() -> None:
    op.create_table(
        "outbox_inbox",
        # who received it: one application's name for itself ("billing"), so that two
        # consumers of one message each apply it once
        sa.Column("consumer", sa.Text, nullable=False),
        sa.Column("message_id", sa.Text, nullable=False),
        sa.Column(
            "received_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.PrimaryKeyConstraint("consumer", "message_id", name="outbox_inbox_pkey"),
    )
    op.create_index("outbox_inbox_received_idx", "outbox_inbox", ["received_at"])
    op.execute(
        f"""
        DO $$
        BEGIN
            IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{APP}') THEN
                GRANT SELECT, INSERT ON outbox_inbox TO {APP};
            END IF;
            IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{WRITER}') THEN
                GRANT SELECT, INSERT, UPDATE, DELETE ON outbox_inbox TO {WRITER};
            END IF;
            IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{AUDITOR}') THEN
                GRANT SELECT ON outbox_inbox TO {AUDITOR};
            END IF;
        END
        $$
        """
    )


def downgrade() -> None:
    op.drop_table("outbox_inbox")
