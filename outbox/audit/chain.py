"""The digest chain of seals (G7): each link's digest, reading the chain, appending to it.

Each link of ``outbox_seals`` is a seal of history rows (kind ``seal``) or a prune that
removed sealed rows (kind ``prune``), and its digest covers its own fields and the digest of
the link before it::

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
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from outbox.sql import queries

GENESIS = bytes(32)
#: Seals read per query when the chain is walked.
PAGE = 500

_LOCK = sa.text(queries["chain_lock"])
_END = sa.text(queries["chain_end"])
_INSERT = sa.text(queries["insert_seal"])
_SEALS = sa.text(queries["seals"])
_PRUNES = sa.text(queries["prune_seals"])
_LATEST = sa.text(queries["latest_seal"])


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


@dataclasses.dataclass(frozen=True, slots=True)
class Seal:
    """One link of the chain, as a row of ``outbox_seals`` holds it: a seal of the history
    rows of ``[xid_from, xid_to)`` (kind ``seal``), or a prune that removed the rows of sealed
    ranges (kind ``prune``; its ``rows_digest`` is the digest of the last seal it removed,
    ``actor`` who pruned, and it keeps no ``row_hashes``).

    The one shape of a seal: what sealing returns, what verification and prunes read, and
    what an export holds (there without ``row_hashes``, its rows following it).
    """

    id: int
    kind: str
    xid_from: int
    xid_to: int
    row_count: int
    first_history_id: int | None
    last_history_id: int | None
    rows_digest: bytes
    row_hashes: bytes | None
    previous_digest: bytes | None
    digest: bytes
    actor: str | None
    sealed_at: datetime

    @classmethod
    def of(cls, row: Any) -> Seal:
        """The seal a row of ``outbox_seals`` holds (every column, by name)."""
        values = dict(row._mapping)
        for name in ("rows_digest", "row_hashes", "previous_digest", "digest"):
            if values[name] is not None:
                values[name] = bytes(values[name])
        return cls(**values)

    def own_digest(self) -> bytes:
        """The digest the seal's own fields give (compare with :attr:`digest`)."""
        return chain_digest(
            self.kind, self.previous_digest, self.xid_from, self.xid_to, self.row_count,
            self.rows_digest,
        )  # fmt: skip


def lock_chain(connection: sa.Connection) -> tuple[bytes | None, int]:
    """Take the chain's append lock for this transaction; return the digest at its end and
    the transaction id up to which history is sealed (prunes do not move it)."""
    connection.execute(_LOCK)
    end = connection.execute(_END).one()
    return (None if end.digest is None else bytes(end.digest)), int(end.sealed_to)


def append(
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
) -> Seal:
    """Append a seal or a prune linked to ``previous`` (under :func:`lock_chain`)."""
    digest = chain_digest(kind, previous, xid_from, xid_to, row_count, rows_digest)
    row = connection.execute(
        _INSERT,
        {
            "kind": kind, "xid_from": xid_from, "xid_to": xid_to, "row_count": row_count,
            "first_history_id": first_history_id, "last_history_id": last_history_id,
            "rows_digest": rows_digest, "row_hashes": row_hashes,
            "previous_digest": previous, "digest": digest, "actor": actor,
        },
    ).one()  # fmt: skip
    return Seal(
        int(row.id), kind, xid_from, xid_to, row_count, first_history_id, last_history_id,
        rows_digest, row_hashes, previous, digest, actor, row.sealed_at,
    )  # fmt: skip


def iter_seals(connection: sa.Connection, after_id: int = 0) -> Iterator[Seal]:
    """The chain in order, prunes included, read a page at a time."""
    while True:
        rows = connection.execute(_SEALS, {"after_id": after_id, "limit": PAGE}).all()
        for row in rows:
            yield Seal.of(row)
        if len(rows) < PAGE:
            return
        after_id = rows[-1].id


def latest_seal(connection: sa.Connection) -> Seal | None:
    """The end of the chain (a seal or a prune), or ``None`` before the first seal."""
    row = connection.execute(_LATEST).first()
    return None if row is None else Seal.of(row)


def prune_links(connection: sa.Connection) -> list[Seal]:
    """The prune links of the chain, in order."""
    return [Seal.of(row) for row in connection.execute(_PRUNES)]


def pruned_ranges(seals: Iterable[Seal]) -> list[Seal]:
    return [s for s in seals if s.kind == "prune"]


def is_pruned(seal: Seal, prunes: Iterable[Seal]) -> bool:
    """Whether a later prune removed the rows of ``seal`` (it stays in the chain)."""
    return seal.kind == "seal" and any(
        p.id > seal.id and p.xid_from <= seal.xid_from and seal.xid_to <= p.xid_to for p in prunes
    )


def unpruned_seals(connection: sa.Connection) -> list[Seal]:
    """The chain from its oldest seal whose rows are still in history on (prunes included)."""
    seals = list(iter_seals(connection))
    prunes = pruned_ranges(seals)
    start = next(
        (i for i, s in enumerate(seals) if s.kind == "seal" and not is_pruned(s, prunes)),
        len(seals),
    )
    return seals[start:]
