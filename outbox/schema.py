"""Table objects for SQLAlchemy Core queries.

The schema itself is defined by the Alembic migrations in ``migrations/``; a test
compares these objects with a migrated database so the two cannot drift apart.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, BYTEA, JSONB, UUID

metadata = sa.MetaData()

#: Live work only: pending (or scheduled), running, dead. Succeeded and cancelled
#: jobs leave this table in the transaction that records their history row.
jobs = sa.Table(
    "outbox_jobs",
    metadata,
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
    sa.Column("run_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column(
        "enqueued_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
    ),
    sa.Column("claimed_at", sa.DateTime(timezone=True)),
    sa.Column("lease_expires_at", sa.DateTime(timezone=True)),
    sa.Column("relay", sa.Text),
    sa.Column("last_error", sa.Text),
    #: Lost its lease beside other jobs: claimed only alone from then on (outbox_0007).
    sa.Column("isolated", sa.Boolean, nullable=False, server_default=sa.false()),
)
sa.Index(
    "outbox_jobs_ready_idx",
    jobs.c.queue,
    jobs.c.priority,
    jobs.c.run_at,
    jobs.c.id,
    postgresql_where=jobs.c.state == "pending",
)
sa.Index(
    "outbox_jobs_isolated_idx",
    jobs.c.queue,
    jobs.c.priority,
    jobs.c.run_at,
    jobs.c.id,
    postgresql_where=sa.and_(jobs.c.state == "pending", jobs.c.isolated),
)
sa.Index("outbox_jobs_key_idx", jobs.c.key, jobs.c.id, postgresql_where=jobs.c.key.isnot(None))
# Blocked keys, as the console's overview and `outbox status` list them (outbox_0012).
sa.Index(
    "outbox_jobs_dead_key_idx",
    jobs.c.queue,
    jobs.c.key,
    postgresql_where=sa.and_(jobs.c.state == "dead", jobs.c.key.isnot(None)),
)
sa.Index(
    "outbox_jobs_lease_idx", jobs.c.lease_expires_at, postgresql_where=jobs.c.state == "running"
)

#: One row per transition, appended in the transaction that makes it (G7).
history = sa.Table(
    "outbox_history",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
    sa.Column("job_uuid", UUID(as_uuid=True), nullable=False),
    sa.Column("event", sa.Text, nullable=False),
    sa.Column("type", sa.Text, nullable=False),
    sa.Column("queue", sa.Text, nullable=False),
    sa.Column("key", sa.Text),
    sa.Column("attempt", sa.Integer, nullable=False, server_default="0"),
    sa.Column("payload", JSONB),
    sa.Column("run_at", sa.DateTime(timezone=True)),
    sa.Column("relay", sa.Text),
    sa.Column("actor", sa.Text),
    sa.Column("reason", sa.Text),
    sa.Column("error", JSONB),
    sa.Column("duration_ms", sa.Float),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column(
        "xid",
        sa.BigInteger,
        nullable=False,
        server_default=sa.text("(pg_current_xact_id())::text::bigint"),
    ),
    #: The payload's SHA-256 instead of the payload, where the operator redacts payloads.
    sa.Column("payload_sha256", BYTEA),
)
sa.Index("outbox_history_job_idx", history.c.job_uuid, history.c.id)
sa.Index(
    "outbox_history_at_idx",
    history.c.at,
    postgresql_using="brin",
    # each block range summarized as it fills (outbox_0012), not when vacuum comes
    postgresql_with={"autosummarize": "on"},
)
# History by key (outbox_0012): the console's /keys/<key> and `outbox audit trail --key`.
sa.Index(
    "outbox_history_key_idx",
    history.c.key,
    history.c.id,
    postgresql_where=history.c.key.isnot(None),
)
sa.Index("outbox_history_xid_idx", history.c.xid)

#: The digest chain: seals over transaction-id ranges of history, and prunes (G7).
seals = sa.Table(
    "outbox_seals",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
    sa.Column("kind", sa.Text, nullable=False, server_default="seal"),
    sa.Column("xid_from", sa.BigInteger, nullable=False),
    sa.Column("xid_to", sa.BigInteger, nullable=False),
    sa.Column("row_count", sa.BigInteger, nullable=False),
    sa.Column("first_history_id", sa.BigInteger),
    sa.Column("last_history_id", sa.BigInteger),
    sa.Column("rows_digest", BYTEA, nullable=False),
    sa.Column("row_hashes", BYTEA),
    sa.Column("previous_digest", BYTEA),
    sa.Column("digest", BYTEA, nullable=False),
    sa.Column("actor", sa.Text),
    sa.Column(
        "sealed_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
    ),
)
sa.Index(
    "outbox_seals_from_idx",
    seals.c.xid_from,
    unique=True,
    postgresql_where=sa.text("kind = 'seal'"),
)

#: Idempotency keys remembered for their retention window (G5), whatever became of the job.
idempotency = sa.Table(
    "outbox_idempotency",
    metadata,
    sa.Column("idempotency_key", sa.Text, primary_key=True),
    sa.Column("job_uuid", UUID(as_uuid=True), nullable=False),
    sa.Column(
        "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
    ),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
)
sa.Index("outbox_idempotency_expires_idx", idempotency.c.expires_at)

#: Relays that announced themselves, with their last heartbeat.
relays = sa.Table(
    "outbox_relays",
    metadata,
    sa.Column("relay", sa.Text, primary_key=True),
    sa.Column("host", sa.Text, nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("queues", ARRAY(sa.Text), nullable=False),
    sa.Column("concurrency", sa.Integer, nullable=False),
    sa.Column("types", ARRAY(sa.Text), nullable=False, server_default="{}"),
    sa.Column("version", sa.Text, nullable=False),
    sa.Column(
        "started_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
    ),
    sa.Column(
        "heartbeat_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
    ),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
)

#: Periodic schedules, one row each: the last tick enqueued and the next one due.
schedules = sa.Table(
    "outbox_schedules",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("type", sa.Text, nullable=False),
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

#: Message ids each consumer has received (``outbox.inbox``): a second receipt is a no-op.
inbox = sa.Table(
    "outbox_inbox",
    metadata,
    sa.Column("consumer", sa.Text, primary_key=True),
    sa.Column("message_id", sa.Text, primary_key=True),
    sa.Column(
        "received_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
    ),
)
sa.Index("outbox_inbox_received_idx", inbox.c.received_at)
