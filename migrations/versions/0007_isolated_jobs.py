"""Jobs that lost their lease beside others run alone from then on (G2, G6).

A relay process runs many jobs at once. When it dies (a segfault, an OOM kill) or stops
answering, every job it held loses its lease together, and nothing tells which handler was
to blame. Charging all of them an attempt made innocent jobs pay for a poison one: each
crash cost every neighbour an attempt, until some ended dead without ever failing.

`isolated` marks such a job: the rescuer gives its attempt back and sets the flag; from
then on relays claim it only alone, with nothing else running in their process. A job
that loses its lease while isolated was the only one that could be to blame, and that
attempt counts. A small partial index finds isolated jobs without reading the ready ones.

Revision ID: outbox_0007
Revises: outbox_0006
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "outbox_0007"
down_revision: str | None = "outbox_0006"
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "outbox_jobs",
        sa.Column("isolated", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    op.create_index(
        "outbox_jobs_isolated_idx",
        "outbox_jobs",
        ["queue", "priority", "run_at", "id"],
        postgresql_where=sa.text("state = 'pending' AND isolated"),
    )


def downgrade() -> None:
    op.drop_index("outbox_jobs_isolated_idx", table_name="outbox_jobs")
    op.drop_column("outbox_jobs", "isolated")
