"""The ledger's job handlers.

``registry`` is what a relay runs: ``--app outbox.demo.handlers:registry``.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Session

import outbox
from outbox.demo.models import Account, Entry

registry = outbox.Registry(strict=True)


@registry.handler("ledger.posted", queue="ledger", max_attempts=10, timeout=30)
def post(job: outbox.Job, session: Session) -> None:
    """Apply a transfer's entries to the balances, exactly once (G3).

    Its writes go through ``session``, the transaction that completes the job, so
    they commit if and only if the job is recorded as done.
    """
    entries = session.scalars(
        sa.select(Entry)
        .where(Entry.transfer_id == job.payload["transfer_id"], ~Entry.posted)
        .order_by(Entry.account_id)  # lock accounts in one order: no deadlocks between jobs
    ).all()
    for entry in entries:
        session.execute(
            sa.update(Account)
            .where(Account.id == entry.account_id)
            .values(posted_balance=Account.posted_balance + entry.amount)
        )
        entry.posted = True


@registry.handler("ledger.receipt", queue="notifications", max_attempts=5, timeout=10)
def receipt(job: outbox.Job) -> None:
    """Tell the customer; a real mailer would get ``job.idempotency_key`` to drop repeats."""
