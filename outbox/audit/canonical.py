"""History rows of a transaction-id range in canonical order, and what they hash to (G7).

Each row's canonical text is built in the database (``outbox_history_canonical``) and hashed
with SHA-256; a range's rows digest is the SHA-256 of its rows' hashes concatenated in
canonical order (transaction id, then id), computed there too. A seal keeps each row's 8-byte
prefix, so that verification can name the first row that no longer matches.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import sqlalchemy as sa

from outbox.sql import queries

_COUNT = sa.text(queries["count_range"])
_DIGEST = sa.text(queries["digest_range"])
_ROW_HASHES = sa.text(queries["row_hashes"])
_CANONICAL = sa.text(queries["canonical_rows"])


@dataclasses.dataclass(frozen=True, slots=True)
class RangeDigest:
    """What the rows of a transaction-id range hash to."""

    row_count: int
    first_history_id: int | None
    last_history_id: int | None
    rows_digest: bytes
    row_hashes: bytes


def count_range(connection: sa.Connection, xid_from: int, xid_to: int) -> int:
    """How many history rows ``[xid_from, xid_to)`` holds (no hashing)."""
    bounds = {"xid_from": xid_from, "xid_to": xid_to}
    return int(connection.execute(_COUNT, bounds).scalar_one())


def digest_range(connection: sa.Connection, xid_from: int, xid_to: int) -> RangeDigest:
    """The range's rows counted and hashed in the database (``digest_range`` in audit.sql)."""
    row = connection.execute(_DIGEST, {"xid_from": xid_from, "xid_to": xid_to}).one()
    return RangeDigest(
        row.row_count,
        row.first_history_id,
        row.last_history_id,
        bytes(row.rows_digest),
        bytes(row.row_hashes),
    )


def prefixes(row_hashes: bytes) -> list[bytes]:
    """A seal's ``row_hashes`` cut into each row's 8-byte prefix, in canonical order."""
    return [row_hashes[i : i + 8] for i in range(0, len(row_hashes), 8)]


def row_prefixes(connection: sa.Connection, xid_from: int, xid_to: int) -> list[tuple[int, bytes]]:
    """Each history row of the range, as (id, 8-byte prefix of its hash), in canonical order."""
    rows = connection.execute(_ROW_HASHES, {"xid_from": xid_from, "xid_to": xid_to})
    return [(int(history_id), bytes(prefix)) for history_id, prefix in rows]


def canonical_rows(connection: sa.Connection, xid_from: int, xid_to: int) -> Iterator[str]:
    """Each history row of the range exactly as it was hashed, streamed in canonical order."""
    statement = _CANONICAL.execution_options(stream_results=True, max_row_buffer=5000)
    for (text,) in connection.execute(statement, {"xid_from": xid_from, "xid_to": xid_to}):
        yield text
