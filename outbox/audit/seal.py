"""The digest chain (G7): seals over history that can no longer change.

A seal covers the history rows of a range of transaction ids ``[xid_from, xid_to)``, where
``xid_to`` is the xmin of the sealer's snapshot: every transaction below it has ended, so no
row of the range can still appear, however late its transaction commits. Each seal stores the
SHA-256 over its rows in canonical order and links to the previous seal::

    digest = SHA-256("outbox seal v1" | kind | previous digest | xid_from | xid_to |
                     row_count | rows digest)

so changing, adding or removing any sealed row, or any seal, changes every digest after it.
The database checks each link as it is appended (the trigger outbox_seals_checked): only
``outbox_writer`` and the owner append, and only a link that continues the chain, matches its
digest and ends at or below the inserting snapshot's xmin.
"""

from __future__ import annotations

import dataclasses
import hashlib
import struct
from typing import Protocol

import sqlalchemy as sa

from outbox import locks
from outbox.errors import OutboxError
from outbox.sql import queries

GENESIS = bytes(32)
#: Rows one seal holds at most (a backlog is sealed in several); one transaction's rows are
#: never split, so a seal of a single huge transaction holds more.
SEAL_ROWS = 100_000
#: Session-level advisory lock of the one relay that seals: (class, id).
SEALER_LOCK = locks.SEALER

_LOCK = sa.text(queries["chain_lock"])
_END = sa.text(queries["chain_end"])
_XMIN = sa.text(queries["snapshot_xmin"])
_SEALED_BY = sa.text(queries["sealed_by"])
_COUNT = sa.text(queries["count_range"])
_DIGEST = sa.text(queries["digest_range"])
_SPLIT = sa.text(queries["range_split"])
_INSERT = sa.text(queries["insert_seal"])
_LAG = sa.text(queries["seal_lag"])


def chain_digest(
    kind: str,
    previous: bytes | None,
    xid_from: int,
    xid_to: int,
    row_count: int,
    rows_digest: bytes,
) -> bytes:
    """The digest of one link of the chain (see the module's docstring)."""
    h = hashlib.sha256(b"outbox seal v1\n")
    h.update(kind.encode("ascii") + b"\n")
    h.update(previous or GENESIS)
    h.update(struct.pack(">qqq", xid_from, xid_to, row_count))
    h.update(rows_digest)
    return h.digest()


class Link(Protocol):
    """What a seal's own digest is made of, wherever the seal comes from."""

    @property
    def kind(self) -> str: ...
    @property
    def previous_digest(self) -> bytes | None: ...
    @property
    def xid_from(self) -> int: ...
    @property
    def xid_to(self) -> int: ...
    @property
    def row_count(self) -> int: ...
    @property
    def rows_digest(self) -> bytes: ...


def own_digest(link: Link) -> bytes:
    """The digest a seal's own fields give (compare with the digest stored beside them)."""
    return chain_digest(
        link.kind, link.previous_digest, link.xid_from, link.xid_to, link.row_count,
        link.rows_digest,
    )  # fmt: skip


@dataclasses.dataclass(frozen=True, slots=True)
class RangeDigest:
    """What the rows of a transaction-id range hash to."""

    row_count: int
    first_history_id: int | None
    last_history_id: int | None
    rows_digest: bytes
    row_hashes: bytes


def prefixes(row_hashes: bytes) -> list[bytes]:
    """A seal's ``row_hashes`` cut into each row's 8-byte prefix, in canonical order."""
    return [row_hashes[i : i + 8] for i in range(0, len(row_hashes), 8)]


def digest_range(connection: sa.Connection, xid_from: int, xid_to: int) -> RangeDigest:
    row = connection.execute(_DIGEST, {"xid_from": xid_from, "xid_to": xid_to}).one()
    hashes = bytes(row.hashes or b"")
    prefixes = b"".join(hashes[i : i + 8] for i in range(0, len(hashes), 32))
    return RangeDigest(
        row.row_count,
        row.first_history_id,
        row.last_history_id,
        hashlib.sha256(hashes).digest(),
        prefixes,
    )


@dataclasses.dataclass(frozen=True, slots=True)
class Sealed:
    id: int
    xid_from: int
    xid_to: int
    row_count: int


def lock_chain(connection: sa.Connection) -> tuple[bytes | None, int]:
    """Take the chain's append lock for this transaction; return the digest at its end and
    the transaction id up to which history is sealed (prunes do not move it)."""
    connection.execute(_LOCK)
    end = connection.execute(_END).one()
    return (None if end.digest is None else bytes(end.digest)), int(end.sealed_to)


def append_link(
    connection: sa.Connection,
    previous: bytes | None,
    kind: str,
    xid_from: int,
    xid_to: int,
    row_count: int,
    rows_digest: bytes,
    *,
    first_history_id: int | None,
    last_history_id: int | None,
    row_hashes: bytes | None = None,
    actor: str | None = None,
) -> int:
    """Append a seal or a prune linked to ``previous`` (under :func:`lock_chain`); its id."""
    digest = chain_digest(kind, previous, xid_from, xid_to, row_count, rows_digest)
    return int(
        connection.execute(
            _INSERT,
            {
                "kind": kind, "xid_from": xid_from, "xid_to": xid_to, "row_count": row_count,
                "first_history_id": first_history_id, "last_history_id": last_history_id,
                "rows_digest": rows_digest, "row_hashes": row_hashes,
                "previous_digest": previous, "digest": digest, "actor": actor,
            },
        ).scalar_one()
    )  # fmt: skip


def seal_once(connection: sa.Connection, *, max_rows: int = SEAL_ROWS) -> Sealed | None:
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
        bounds = {"xid_from": xid_from, "xid_to": xid_to}
        count = connection.execute(_COUNT, bounds).scalar_one()
        if count == 0:
            return None  # nothing to seal yet; the next seal starts from the same place
        if count > max_rows:
            split = connection.execute(_SPLIT, {**bounds, "rows": max_rows}).scalar()
            xid_to = max(int(split), xid_from + 1) if split is not None else xid_to
        found = digest_range(connection, xid_from, xid_to)
        seal_id = append_link(
            connection, previous, "seal", xid_from, xid_to, found.row_count,
            found.rows_digest, first_history_id=found.first_history_id,
            last_history_id=found.last_history_id, row_hashes=found.row_hashes,
        )  # fmt: skip
    return Sealed(seal_id, xid_from, xid_to, found.row_count)


def _past_the_horizon(connection: sa.Connection, sealed_to: int, horizon: int) -> OutboxError:
    """The chain ends past every transaction that has ended: a link no sealer could have
    written got in behind the triggers, and no seal can follow it."""
    seal_id = connection.execute(_SEALED_BY).scalar()
    return OutboxError(
        f"cannot seal: seal {seal_id} covers transactions up to {sealed_to - 1}, past the oldest "
        f"transaction still running ({horizon}): it is forged or invalid, and no seal can "
        "follow it; `outbox audit verify` names it (docs/howto/audit-roles.md)"
    )


def seal_all(connection: sa.Connection, *, max_rows: int = SEAL_ROWS) -> list[Sealed]:
    """Seal until caught up with the oldest open transaction."""
    sealed: list[Sealed] = []
    while (seal := seal_once(connection, max_rows=max_rows)) is not None:
        sealed.append(seal)
    return sealed


def lag_seconds(connection: sa.Connection) -> float:
    """How long the oldest history row not yet sealed has waited (0 when all are sealed)."""
    return float(connection.execute(_LAG).scalar_one())
