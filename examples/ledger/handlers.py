"""The ledger's job handlers, and where its events are published.

``registry`` is what a relay runs: ``--app outbox.demo.handlers:registry``.
"""

from __future__ import annotations

import os

import sqlalchemy as sa
from sqlalchemy.orm import Session

import outbox
from outbox.demo.models import Account, Entry
from outbox.publish import Webhook

#: The secret the ledger and its partner share (a real one comes from a secret store).
SECRET = os.environ.get("LEDGER_WEBHOOK_SECRET", "whsec_bGVkZ2VyIGRlbW8gc2hhcmVkIHNlY3JldA==")

registry = outbox.Registry(strict=True)

#: ``transfer.posted`` events go to the partner's webhook receiver, signed; the demo runs
#: one on this machine, hence ``allow_private`` (a real partner's address is public).
registry.destination(
    "partner",
    Webhook(
        os.environ.get("LEDGER_WEBHOOK_URL", "http://127.0.0.1:8787/hooks"),
        secret=SECRET,
        timeout=5,
        allow_private=True,
    ),
    queue="partner",
    max_attempts=10,
)


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
