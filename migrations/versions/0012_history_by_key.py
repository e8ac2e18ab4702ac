"""History by key: an index that finds every row of one key without reading all of history.

`outbox ui` shows what happened to an aggregate's work (`/keys/<key>`: account 42's jobs,
live or ended) and `outbox audit trail --key` answers the same question; both read
`outbox_history` by key. Without an index that is a scan of the whole history, which grows
without bound until it is pruned.

- `outbox_history_key_idx` on `(key, id)`, partial: rows without a key (most jobs of many
  systems) are not indexed and cost nothing more to append.

The index is built in the migration's transaction, which holds back appends to history while it
runs. On a large history, build it first without blocking, then migrate (the migration skips an
index that exists)::

    CREATE INDEX CONCURRENTLY IF NOT EXISTS outbox_history_key_idx
        ON outbox_history (key, id) WHERE key IS NOT NULL;

Revision ID: outbox_0012
Revises: outbox_0011
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "outbox_0012"
down_revision: str | None = "outbox_0011"
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        "CREATE INDEX IF NOT EXISTS outbox_history_key_idx "
        "ON outbox_history (key, id) WHERE key IS NOT NULL"
    )


def downgrade() -> None:
    op.execute("DROP INDEX outbox_history_key_idx")
