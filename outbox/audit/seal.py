"""Sealing (G7): history that can no longer change joins the digest chain.

A seal covers the history rows of a range of transaction ids ``[xid_from, xid_to)``, where
``xid_to`` is the xmin of the sealer's snapshot: every transaction below it has ended, so no
row of the range can still appear, however late its transaction commits. Each seal stores the
SHA-256 over its rows in canonical order (:mod:`outbox.audit.canonical`) and links to the
previous seal (:mod:`outbox.audit.chain`).
"""

from __future__ import annotations

import sqlalchemy as sa

from outbox import locks
from outbox.audit.canonical import count_range, digest_range
from outbox.audit.chain import Seal, append, lock_chain
from outbox.errors import OutboxError
from outbox.sql import queries

#: Rows one seal holds at most (a backlog is sealed in several); one transaction's rows are
#: never split, so a seal of a single huge transaction holds more.
SEAL_ROWS = 100_000
#: Session-level advisory lock of the one relay that seals: (class, id).
SEALER_LOCK = locks.SEALER

_XMIN = sa.text(queries["snapshot_xmin"])
_SEALED_BY = sa.text(queries["sealed_by"])
_SPLIT = sa.text(queries["range_split"])
_LAG = sa.text(queries["seal_lag"])


def seal_once(connection: sa.Connection, *, max_rows: int = SEAL_ROWS) -> Seal | None:
    """Seal what can no longer change, up to ``max_rows`` rows, in a transaction of its own.

    Returns the seal written, or ``None`` when nothing new has ended. Safe to call from
    many processes: appends to the chain take turns under a transaction-level lock.
    ``connection`` must not be in a transaction.
    """
    if connection.in_transaction():
        raise OutboxError("sealing needs a connection outside a transaction: commit or roll back")
    with connection.begin():
        previous, sealed_to = lock_chain(connection)
        xid_from = sealed_to
        xid_to = int(connection.execute(_XMIN).scalar_one())
        if xid_to < xid_from:
            raise _past_the_horizon(connection, xid_from, xid_to)
        if xid_to == xid_from:
            return None
        count = count_range(connection, xid_from, xid_to)
        if count == 0:
            return None  # nothing to seal yet; the next seal starts from the same place
        if count > max_rows:
            bounds = {"xid_from": xid_from, "xid_to": xid_to, "rows": max_rows}
            split = connection.execute(_SPLIT, bounds).scalar()
            xid_to = max(int(split), xid_from + 1) if split is not None else xid_to
        found = digest_range(connection, xid_from, xid_to)
        return append(
            connection, previous, "seal", xid_from, xid_to, found.row_count,
            found.rows_digest, first_history_id=found.first_history_id,
            last_history_id=found.last_history_id, row_hashes=found.row_hashes,
        )  # fmt: skip


def _past_the_horizon(connection: sa.Connection, sealed_to: int, horizon: int) -> OutboxError:
    """The chain ends past every transaction that has ended: a link no sealer could have
    written got in behind the triggers, and no seal can follow it."""
    seal_id = connection.execute(_SEALED_BY).scalar()
    return OutboxError(
        f"cannot seal: seal {seal_id} covers transactions up to {sealed_to - 1}, past the oldest "
        f"transaction still running ({horizon}): it is forged or invalid, and no seal can "
        "follow it; `outbox audit verify` names it (docs/howto/audit-roles.md)"
    )


def seal_all(connection: sa.Connection, *, max_rows: int = SEAL_ROWS) -> list[Seal]:
    """Seal until caught up with the oldest open transaction."""
    sealed: list[Seal] = []
    while (seal := seal_once(connection, max_rows=max_rows)) is not None:
        sealed.append(seal)
    return sealed


def lag_seconds(connection: sa.Connection) -> float:
    """How long the oldest history row not yet sealed has waited (0 when all are sealed)."""
    return float(connection.execute(_LAG).scalar_one())
