"""Redaction covers stored errors too (G7): a handler's error message can quote a payload value
(``int(job.payload["card"])`` fails with ``invalid literal for int() with base 10:
'4111-...'``), so with redaction on no message or traceback is stored either.

- `outbox_history_redact_error`, BEFORE INSERT on `outbox_history` for each row with an
  error, keeps the error's type as raised, a message that names it, and the SHA-256 of the
  error as raised (its jsonb text): ``{"type": "builtins.ValueError", "message": "ValueError:
  message redacted", "traceback": null, "redacted": true, "sha256": "<hex>"}``. The row is
  sealed as stored, like a redacted payload: the canonical form does not change.
- `outbox_jobs_redact_error`, BEFORE UPDATE OF last_error on `outbox_jobs`, replaces a new
  `last_error` by ``message redacted (sha256 <hex of the message>)``. The job's row holds no
  error type; its history's `failed` row does. Only statements that set `last_error` (a failed
  completion, a rescue) fire it, never claims or heartbeats, and a disabled trigger costs
  nothing. Its WHEN clause leaves alone a value already redacted and a rescue's own message,
  ``lease expired on relay <the job's relay>``, which quotes no payload.

Both are switched with `outbox_history_redact_payload` by `outbox audit redaction on|off`;
where payload redaction is on when this revision runs, they are enabled at once. Rows already
written stay as they are: history is append-only.

Revision ID: outbox_0009
Revises: outbox_0008
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "outbox_0009"
down_revision: str | None = "outbox_0008"
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None

FUNCTIONS = ("outbox_redact_error()", "outbox_redact_last_error()")
#: A last_error this revision redacted: never redacted again.
REDACTED = "'^message redacted [(]sha256 [0-9a-f]{64}[)]$'"
#: The message `rescue_expired` (relay/sql/rescue.sql) writes: it names the relay, no payload.
RESCUED = "'lease expired on relay ' || OLD.relay"


def _pin_search_path(function: str) -> None:
    """Resolve names in the schema the tables live in, never in one a caller put first."""
    op.execute(
        f"""
        DO $$
        BEGIN
            EXECUTE format('ALTER FUNCTION {function} SET search_path = pg_catalog, %I, pg_temp',
                           current_schema());
        END
        $$
        """
    )


def upgrade() -> None:
    # Run as the inserting role (a relay's outbox_writer): they read only the row itself.
    # The digest is over the error as PostgreSQL prints the jsonb, as payload_sha256 is over
    # the payload's, so an auditor holding the error can recompute it with PostgreSQL alone.
    op.execute(
        """
        CREATE FUNCTION outbox_redact_error() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            NEW.error := jsonb_build_object(
                'type', NEW.error -> 'type',
                'message', coalesce(
                    regexp_replace(NEW.error ->> 'type', '^builtins[.]', '') || ': ', '')
                    || 'message redacted',
                'traceback', NULL,
                'redacted', true,
                'sha256', encode(sha256(convert_to(NEW.error::text, 'UTF8')), 'hex'));
            RETURN NEW;
        END
        $$
        """
    )
    op.execute(
        """
        CREATE FUNCTION outbox_redact_last_error() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            NEW.last_error := 'message redacted (sha256 '
                || encode(sha256(convert_to(NEW.last_error, 'UTF8')), 'hex') || ')';
            RETURN NEW;
        END
        $$
        """
    )
    for function in FUNCTIONS:
        _pin_search_path(function)
        op.execute(f"REVOKE ALL ON FUNCTION {function} FROM PUBLIC")

    # outbox_jobs before outbox_history, the order relays lock them in (complete_batch,
    # the enqueue trigger): a running relay cannot deadlock with this revision.
    op.execute(
        f"""
        CREATE TRIGGER outbox_jobs_redact_error BEFORE UPDATE OF last_error ON outbox_jobs
        FOR EACH ROW WHEN (NEW.last_error IS NOT NULL
                           AND NEW.last_error !~ {REDACTED}
                           AND NEW.last_error IS DISTINCT FROM {RESCUED})
        EXECUTE FUNCTION outbox_redact_last_error()
        """
    )
    op.execute(
        "CREATE TRIGGER outbox_history_redact_error BEFORE INSERT ON outbox_history "
        "FOR EACH ROW WHEN (NEW.error IS NOT NULL) EXECUTE FUNCTION outbox_redact_error()"
    )
    # Created enabled; disabled again unless payload redaction is on: one switch for both.
    op.execute(
        """
        DO $$
        BEGIN
            IF NOT EXISTS (SELECT FROM pg_trigger
                           WHERE tgrelid = 'outbox_history'::regclass
                             AND tgname = 'outbox_history_redact_payload'
                             AND tgenabled <> 'D') THEN
                ALTER TABLE outbox_jobs DISABLE TRIGGER outbox_jobs_redact_error;
                ALTER TABLE outbox_history DISABLE TRIGGER outbox_history_redact_error;
            END IF;
        END
        $$
        """
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER outbox_jobs_redact_error ON outbox_jobs")
    op.execute("DROP TRIGGER outbox_history_redact_error ON outbox_history")
    for function in FUNCTIONS:
        op.execute(f"DROP FUNCTION {function}")
