"""Moving money: the domain writes and the jobs they cause commit together (G1)."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Session

import outbox
from outbox.demo.handlers import registry
from outbox.demo.models import Account, Entry, Transfer


def open_account(session: Session, name: str) -> Account:
    account = Account(name=name)
    session.add(account)
    session.flush()
    return account


def transfer(
    session: Session, reference: str, source: Account, target: Account, amount: int
) -> outbox.Enqueued:
    """Record a transfer as two entries that sum to zero, enqueue its posting, and publish
    a ``transfer.posted`` event to the partner, all in the caller's transaction.

    The job is keyed by the source account, so postings of one account run in
    commit order (and its events reach the partner in that order); the transfer's
    reference is its idempotency key, so a client that retries the request gets the
    first job back instead of a second, and no second event.
    """
    if amount <= 0:
        raise ValueError(f"a transfer moves a positive amount, not {amount}")
    existing = session.scalar(sa.select(Transfer).where(Transfer.reference == reference))
    if existing is None:
        record = Transfer(
            reference=reference, source_id=source.id, target_id=target.id, amount=amount
        )
        session.add(record)
        session.flush()
        session.add_all(
            [
                Entry(transfer_id=record.id, account_id=source.id, amount=-amount),
                Entry(transfer_id=record.id, account_id=target.id, amount=amount),
            ]
        )
        transfer_id = record.id
    else:
        transfer_id = existing.id
    handle = outbox.enqueue(
        session,
        "ledger.posted",
        {"transfer_id": transfer_id},
        key=f"account:{source.id}",
        idempotency_key=f"transfer:{reference}",
        registry=registry,
    )
    if not handle.duplicate:
        outbox.enqueue(
            session,
            "ledger.receipt",
            {"transfer_id": transfer_id, "account": source.name},
            registry=registry,
        )
        outbox.publish.publish(
            session,
            "partner",
            {"transfer_id": transfer_id, "reference": reference, "amount": amount},
            key=f"account:{source.id}",
            event="transfer.posted",
            queue="partner",
        )
    return handle


def unbalanced_transfers(session: Session) -> list[int]:
    """Transfers whose entries do not sum to zero: always empty in a sound ledger."""
    rows = session.execute(
        sa.select(Entry.transfer_id)
        .group_by(Entry.transfer_id)
        .having(sa.func.sum(Entry.amount) != 0)
    )
    return [row[0] for row in rows]


def projection_mismatches(session: Session) -> list[str]:
    """Accounts whose posted balance differs from the sum of their posted entries."""
    posted = (
        sa.select(Entry.account_id, sa.func.sum(Entry.amount).label("total"))
        .where(Entry.posted)
        .group_by(Entry.account_id)
        .subquery()
    )
    rows = session.execute(
        sa.select(Account.name)
        .outerjoin(posted, posted.c.account_id == Account.id)
        .where(Account.posted_balance != sa.func.coalesce(posted.c.total, 0))
    )
    return [row[0] for row in rows]
