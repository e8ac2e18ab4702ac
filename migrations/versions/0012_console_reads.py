"""What the console and the audit trail read, found without reading whole tables.

`outbox ui` shows what happened to an aggregate's work (`/keys/<key>`: account 42's jobs,
live or ended) and `outbox audit trail --key` answers the same question; both read
`outbox_history` by key, which without an index is a scan of the whole history. The overview
and `outbox status` list blocked keys (a key whose first live job is dead), which scanned every
live job. Both measured by `python -m bench.console` (1,000,000 history rows, 100,000 live
jobs): the blocked keys from 17.7 ms to 0.8 ms.

- `outbox_history_key_idx` on `(key, id)`, partial: rows without a key (most jobs of many
  systems) are not indexed and cost nothing more to append.
- `outbox_jobs_dead_key_idx` on `(queue, key)` of dead jobs with a key: as small as the
  dead jobs are few.
- `outbox_history_at_idx` (BRIN on `at`) summarizes each block range as it fills
  (`autosummarize`): without it, every question by time reads the whole tail that vacuum has
  not summarized yet (200,000 rows and more on a busy system).

The indexes are built in the migration's transaction, which holds back appends to history
while it runs. On a large history, build them first without blocking, then migrate (the
migration skips an index that exists)::

    CREATE INDEX CONCURRENTLY IF NOT EXISTS outbox_history_key_idx
        ON outbox_history (key, id) WHERE key IS NOT NULL;

A concurrent build that failed leaves an INVALID index of that name, which the migration
would keep: check that ``SELECT indisvalid FROM pg_index WHERE indexrelid =
'outbox_history_key_idx'::regclass`` is true, or drop it and build it again, before migrating.

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
    op.execute(
        "CREATE INDEX IF NOT EXISTS outbox_jobs_dead_key_idx "
        "ON outbox_jobs (queue, key) WHERE state = 'dead' AND key IS NOT NULL"
    )
    op.execute("ALTER INDEX outbox_history_at_idx SET (autosummarize = on)")


def downgrade() -> None:
    op.execute("ALTER INDEX outbox_history_at_idx RESET (autosummarize)")
    op.execute("DROP INDEX outbox_jobs_dead_key_idx")
    op.execute("DROP INDEX outbox_history_key_idx")
