"""Autovacuum settings for the live-job table, whose rows are all short-lived.

Every job is inserted, updated at least once and deleted within seconds: the default
thresholds (a fifth of the table's rows) wait for dead rows to pile up in millions before a
vacuum, and vacuuming is throttled. These settings vacuum and analyse the table at every
autovacuum round once a few thousand rows have changed, unthrottled, so the claim's index
scans stay short and the planner's statistics stay fresh.

Revision ID: outbox_0005
Revises: outbox_0004
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "outbox_0005"
down_revision: str | None = "outbox_0004"
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None

SETTINGS = {
    "autovacuum_vacuum_scale_factor": "0",
    "autovacuum_vacuum_threshold": "5000",
    "autovacuum_vacuum_insert_scale_factor": "0",
    "autovacuum_vacuum_insert_threshold": "5000",
    "autovacuum_analyze_scale_factor": "0",
    "autovacuum_analyze_threshold": "5000",
    "autovacuum_vacuum_cost_delay": "0",
}


def upgrade() -> None:
    pairs = ", ".join(f"{name} = {value}" for name, value in SETTINGS.items())
    op.execute(f"ALTER TABLE outbox_jobs SET ({pairs})")


def downgrade() -> None:
    op.execute(f"ALTER TABLE outbox_jobs RESET ({', '.join(SETTINGS)})")
