"""Core tables: live jobs, their history, the seal chain and the idempotency store.

Revision ID: outbox_0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import BYTEA, JSONB, UUID

revision: str = "outbox_0001"
down_revision: str | None = None
# A branch of its own, so that an application's Alembic history can include it.
branch_labels: Sequence[str] | None = ("outbox",)
depends_on: Sequence[str] | None = None

NOW = sa.text("now()")


def _tz(name: str, **kw: object) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), **kw)  # type: ignore[arg-type]


def upgrade() -> None:
    op.create_table(
        "outbox_jobs",
        # Ordering only (claim order, per-key order), never looked up: no index of its own.
        sa.Column("id", sa.BigInteger, sa.Identity(always=True), nullable=False),
        sa.Column("uuid", UUID(as_uuid=True), primary_key=True),
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("queue", sa.Text, nullable=False),
        sa.Column("key", sa.Text),
        sa.Column("idempotency_key", sa.Text),
        sa.Column("payload", JSONB, nullable=False),
        sa.Column("state", sa.Text, nullable=False, server_default="pending"),
        sa.Column("priority", sa.SmallInteger, nullable=False, server_default="0"),
        sa.Column("attempt", sa.Integer, nullable=False, server_default="0"),
        sa.Column("max_attempts", sa.Integer),
        _tz("run_at", nullable=False, server_default=NOW),
        _tz("enqueued_at", nullable=False, server_default=NOW),
        _tz("claimed_at"),
        _tz("lease_expires_at"),
        sa.Column("relay", sa.Text),
        sa.Column("last_error", sa.Text),
        sa.CheckConstraint("state IN ('pending', 'running', 'dead')", name="outbox_jobs_state"),
        sa.CheckConstraint("char_length(type) BETWEEN 1 AND 128", name="outbox_jobs_type"),
        sa.CheckConstraint("char_length(queue) BETWEEN 1 AND 64", name="outbox_jobs_queue"),
        sa.CheckConstraint("char_length(key) BETWEEN 1 AND 255", name="outbox_jobs_key"),
        sa.CheckConstraint(
            "char_length(idempotency_key) BETWEEN 1 AND 255", name="outbox_jobs_idempotency_key"
        ),
        sa.CheckConstraint("priority BETWEEN 0 AND 100", name="outbox_jobs_priority"),
        sa.CheckConstraint("attempt >= 0", name="outbox_jobs_attempt"),
        sa.CheckConstraint("max_attempts BETWEEN 1 AND 1000", name="outbox_jobs_max_attempts"),
        # A running job always carries the lease that fences it (G3).
        sa.CheckConstraint(
            "(state = 'running') = (lease_expires_at IS NOT NULL AND relay IS NOT NULL)",
            name="outbox_jobs_running_has_lease",
        ),
    )
    # The claim path: ready work by queue in claim order, and nothing else (G2).
    op.create_index(
        "outbox_jobs_ready_idx",
        "outbox_jobs",
        ["queue", "priority", "run_at", "id"],
        postgresql_where=sa.text("state = 'pending'"),
    )
    # The head of each key is the live job with the lowest id (G4).
    op.create_index(
        "outbox_jobs_key_idx",
        "outbox_jobs",
        ["key", "id"],
        postgresql_where=sa.text("key IS NOT NULL"),
    )
    # The rescuer's scan for expired leases.
    op.create_index(
        "outbox_jobs_lease_idx",
        "outbox_jobs",
        ["lease_expires_at"],
        postgresql_where=sa.text("state = 'running'"),
    )

    op.create_table(
        "outbox_history",
        sa.Column("id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
        sa.Column("job_uuid", UUID(as_uuid=True), nullable=False),
        sa.Column("event", sa.Text, nullable=False),
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("queue", sa.Text, nullable=False),
        sa.Column("key", sa.Text),
        sa.Column("attempt", sa.Integer, nullable=False, server_default="0"),
        sa.Column("payload", JSONB),
        _tz("run_at"),
        sa.Column("relay", sa.Text),
        sa.Column("actor", sa.Text),
        sa.Column("reason", sa.Text),
        sa.Column("error", JSONB),
        sa.Column("duration_ms", sa.Float),
        _tz("at", nullable=False, server_default=NOW),
        sa.Column(
            "xid",
            sa.BigInteger,
            nullable=False,
            server_default=sa.text("(pg_current_xact_id())::text::bigint"),
        ),
        sa.CheckConstraint(
            "event IN ('enqueued', 'claimed', 'succeeded', 'failed', 'retried', 'dead', "
            "'cancelled', 'rescued', 'revived')",
            name="outbox_history_event",
        ),
    )
    op.create_index("outbox_history_job_idx", "outbox_history", ["job_uuid", "id"])
    op.create_index("outbox_history_at_idx", "outbox_history", ["at"], postgresql_using="brin")

    op.create_table(
        "outbox_seals",
        sa.Column("id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
        sa.Column("first_history_id", sa.BigInteger, nullable=False),
        sa.Column("last_history_id", sa.BigInteger, nullable=False),
        sa.Column("row_count", sa.BigInteger, nullable=False),
        sa.Column("digest", BYTEA, nullable=False),
        sa.Column("previous_digest", BYTEA),
        _tz("sealed_at", nullable=False, server_default=NOW),
        sa.CheckConstraint("first_history_id <= last_history_id", name="outbox_seals_range"),
    )

    op.create_table(
        "outbox_idempotency",
        sa.Column("idempotency_key", sa.Text, primary_key=True),
        sa.Column("job_uuid", UUID(as_uuid=True), nullable=False),
        _tz("created_at", nullable=False, server_default=NOW),
        _tz("expires_at", nullable=False),
    )
    op.create_index("outbox_idempotency_expires_idx", "outbox_idempotency", ["expires_at"])


def downgrade() -> None:
    op.drop_table("outbox_idempotency")
    op.drop_table("outbox_seals")
    op.drop_table("outbox_history")
    op.drop_table("outbox_jobs")
