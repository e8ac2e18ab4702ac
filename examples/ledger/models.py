"""The ledger's own tables: the application's schema, not outbox's."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "ledger_accounts"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(unique=True)
    #: A projection of the entries, kept by the ``ledger.posted`` handler.
    posted_balance: Mapped[int] = mapped_column(default=0)


class Transfer(Base):
    __tablename__ = "ledger_transfers"

    id: Mapped[int] = mapped_column(primary_key=True)
    reference: Mapped[str] = mapped_column(unique=True)
    source_id: Mapped[int] = mapped_column(sa.ForeignKey("ledger_accounts.id"))
    target_id: Mapped[int] = mapped_column(sa.ForeignKey("ledger_accounts.id"))
    #: Minor units (cents): money is never a float.
    amount: Mapped[int]
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), default=sa.func.now())


class Entry(Base):
    __tablename__ = "ledger_entries"

    id: Mapped[int] = mapped_column(primary_key=True)
    transfer_id: Mapped[int] = mapped_column(sa.ForeignKey("ledger_transfers.id"))
    account_id: Mapped[int] = mapped_column(sa.ForeignKey("ledger_accounts.id"))
    amount: Mapped[int]
    #: Set by the ``ledger.posted`` handler in the transaction that completes its job.
    posted: Mapped[bool] = mapped_column(default=False)


class Notice(Base):
    """The partner's side: a ``transfer.posted`` event its webhook receiver applied.

    Not unique on ``message_id``: the inbox, not a constraint, makes each apply once.
    """

    __tablename__ = "partner_notices"

    id: Mapped[int] = mapped_column(primary_key=True)
    message_id: Mapped[str]
    reference: Mapped[str]
    amount: Mapped[int]
    received_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), default=sa.func.now())
