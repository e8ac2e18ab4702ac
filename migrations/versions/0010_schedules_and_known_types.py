"""Periodic jobs and rolling deploys.

- `outbox_schedules`: one row per schedule a relay's registry declares (``registry.schedule``).
  Relays enqueue a schedule's tick in the transaction that moves its `last_tick` forward with
  a conditional update (``WHERE last_tick < :tick``), so each tick is enqueued exactly once
  however many relays run: the tick's identity lives in the database, not in a leader's
  memory. `next_tick` is what status and metrics show.
- `outbox_relays.types`: the job types a relay has handlers for. A relay claims only those; a
  job of a type no live relay knows waits (a producer deployed before its consumer) and status
  names its type.

Relays (`outbox_writer`) read and write schedules; auditors read them.

Revision ID: outbox_0010
Revises: outbox_0009
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID

revision: str = "outbox_0010"
down_revision: str | None = "outbox_0009"
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None

WRITER, AUDITOR = "outbox_writer", "outbox_auditor"


def upgrade() -> None:
    op.add_column(
        "outbox_relays",
        sa.Column("types", ARRAY(sa.Text), nullable=False, server_default="{}"),
    )
    op.create_table(
        "outbox_schedules",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("type", sa.Text, nullable=False),
        # the cron expression or interval as declared, and its timezone: what status shows
        sa.Column("spec", sa.Text, nullable=False),
        sa.Column("timezone", sa.Text, nullable=False, server_default="UTC"),
        sa.Column("queue", sa.Text),
        sa.Column("key", sa.Text),
        sa.Column("payload", JSONB, nullable=False, server_default="{}"),
        sa.Column("last_tick", sa.DateTime(timezone=True)),
        sa.Column("last_job_uuid", UUID(as_uuid=True)),
        sa.Column("next_tick", sa.DateTime(timezone=True)),
        sa.Column("relay", sa.Text),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
    )
    op.execute(
        f"""
        DO $$
        BEGIN
            IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{WRITER}') THEN
                GRANT SELECT, INSERT, UPDATE, DELETE ON outbox_schedules TO {WRITER};
            END IF;
            IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{AUDITOR}') THEN
                GRANT SELECT ON outbox_schedules TO {AUDITOR};
            END IF;
        END
        $$
        """
    )


def downgrade() -> None:
    op.drop_table("outbox_schedules")
    op.drop_column("outbox_relays", "types")
