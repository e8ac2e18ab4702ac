"""Verifying the digest chain: every seal recomputed from the rows it covers (G7).

The chain is recomputed from the rows, not read from the stored digests: a superuser who
rewrites a row and then every seal after it gets a chain that agrees with itself, but not
with a digest exported before the rewrite (``verify --against``).

A link that no honest sealer or prune could have written (one reaching past every transaction
that has ended, or one that does not continue the chain) is named as forged, before any row
of its range is recomputed: its rows are not to blame.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from pathlib import Path

import sqlalchemy as sa

from outbox.audit.canonical import RangeDigest, count_range, digest_range, prefixes, row_prefixes
from outbox.audit.chain import Seal, chain_digest, is_pruned, iter_seals, prune_links
from outbox.errors import OutboxError
from outbox.sql import queries

_HORIZON = sa.text(queries["verify_horizon"])
_DIGEST_LINE = re.compile(r"^\s*(\d+)\s+([0-9a-fA-F]{64})\b")


class VerificationError(OutboxError):
    """History or its seals do not match: something was changed after it was sealed."""


@dataclasses.dataclass(slots=True)
class Report:
    seals: int = 0
    rows: int = 0
    pruned_seals: int = 0
    last_seal: int | None = None
    last_digest: bytes | None = None
    checked_against: int = 0


def verify(
    connection: sa.Connection,
    *,
    from_seal: int = 1,
    to_seal: int | None = None,
    against: Mapping[int, bytes] | None = None,
) -> Report:
    """Recompute the chain; raise :class:`VerificationError` at the first mismatch.

    Rows are recomputed for the seals from ``from_seal`` to ``to_seal``; seals before
    ``from_seal`` are chained by their stored digests only. ``against`` maps seal ids to
    digests exported earlier, which the recomputed chain must reach.
    """
    against = dict(against or {})
    pruned = prune_links(connection)
    report = Report()
    chain: bytes | None = None
    sealed_to = 0
    horizon = _Horizon(connection)
    for seal in iter_seals(connection):
        if to_seal is not None and seal.id > to_seal:
            break
        where = f"seal {seal.id}"
        forged = f"{where} is forged or invalid"
        if seal.previous_digest != chain and seal.id >= from_seal:
            raise VerificationError(f"{forged}: it does not link to the seal before it")
        if seal.own_digest() != seal.digest:
            raise VerificationError(f"{forged}: its digest does not match its own fields")
        if horizon.passed_by(seal.xid_to):
            raise VerificationError(
                f"{forged}: it covers transactions up to {seal.xid_to - 1}, past the oldest "
                f"transaction still running ({horizon.xid}), which no sealer can reach"
            )
        if seal.kind == "prune" and seal.xid_to > sealed_to:
            raise VerificationError(
                f"{forged}: a prune of transactions up to {seal.xid_to - 1}, past the sealed "
                f"history (up to {sealed_to - 1})"
            )
        rows_digest = seal.rows_digest
        if seal.kind == "seal":
            if seal.xid_from != sealed_to and seal.id >= from_seal:
                gap = "a range is missing" if seal.xid_from > sealed_to else "the ranges overlap"
                raise VerificationError(
                    f"{forged}: it starts at transaction {seal.xid_from}, but the chain had "
                    f"sealed up to {sealed_to}: {gap}"
                )
            sealed_to = seal.xid_to
            if is_pruned(seal, pruned) and not _holds_rows(connection, seal):
                report.pruned_seals += 1  # a prune link alone never excuses rows still there
            elif seal.id >= from_seal:
                found = digest_range(connection, seal.xid_from, seal.xid_to)
                _compare_rows(connection, seal, found)
                rows_digest = found.rows_digest
                report.rows += found.row_count
        if seal.id < from_seal:
            chain = seal.digest
        else:
            chain = chain_digest(
                seal.kind, chain, seal.xid_from, seal.xid_to, seal.row_count, rows_digest
            )
        expected = against.pop(seal.id, None)
        if expected is not None:
            if expected != chain:
                raise VerificationError(
                    f"{where}: the chain recomputed from history gives {chain.hex()}, but the "
                    f"digest exported for this seal is {expected.hex()}: sealed history or "
                    "seals were rewritten after that digest was taken"
                )
            report.checked_against += 1
        report.seals += 1
        report.last_seal, report.last_digest = seal.id, chain
    if against:
        missing = ", ".join(str(i) for i in sorted(against)[:5])
        raise VerificationError(f"exported digests name seals this database lacks: {missing}")
    return report


class _Horizon:
    """The first transaction no honest link reaches, as of the latest snapshot asked.

    Seals are read a page at a time, each page in a snapshot of its own where the session is
    READ COMMITTED; a seal committed after the horizon was read may rightly reach past it, so
    a seal past it is checked against a fresh snapshot, which is later than the one it was
    read in, before it is called forged.
    """

    def __init__(self, connection: sa.Connection) -> None:
        self._connection = connection
        self.xid = self._read()

    def passed_by(self, xid_to: int) -> bool:
        if xid_to > self.xid:
            self.xid = self._read()
        return xid_to > self.xid

    def _read(self) -> int:
        return int(self._connection.execute(_HORIZON).scalar_one())


def _holds_rows(connection: sa.Connection, seal: Seal) -> bool:
    return bool(count_range(connection, seal.xid_from, seal.xid_to))


def _compare_rows(connection: sa.Connection, seal: Seal, found: RangeDigest) -> None:
    if found.rows_digest == seal.rows_digest and found.row_count == seal.row_count:
        return
    where = f"seal {seal.id} (transactions {seal.xid_from} to {seal.xid_to - 1})"
    stored = prefixes(seal.row_hashes or b"")
    actual = row_prefixes(connection, seal.xid_from, seal.xid_to)
    for index, (history_id, prefix) in enumerate(actual):
        if index >= len(stored):
            raise VerificationError(
                f"{where}: history row {history_id} was added after sealing "
                f"(the seal holds {seal.row_count} rows, history now {len(actual)})"
            )
        if prefix != stored[index]:
            raise VerificationError(
                f"{where}: history row {history_id} does not match: it was changed, or a row "
                "before it was removed or added, after sealing"
            )
    if len(actual) < len(stored):
        after = actual[-1][0] if actual else None
        place = f"after row {after}" if after is not None else "all of them"
        raise VerificationError(
            f"{where}: {len(stored) - len(actual)} sealed row(s) are missing ({place}; the seal "
            f"holds rows {seal.first_history_id} to {seal.last_history_id})"
        )
    raise VerificationError(f"{where}: its rows do not match its digest")


def read_digests(path: Path) -> dict[int, bytes]:
    """Digests kept elsewhere: lines ``<seal id> <hex digest> ...`` as `audit digest` prints;
    blank lines and lines starting with ``#`` are skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise OutboxError(f"cannot read digests from {path}: {exc}") from None
    found: dict[int, bytes] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _DIGEST_LINE.match(line)
        if match is None:
            raise OutboxError(
                f"{path}:{number}: expected '<seal id> <64 hex digits>', got {line[:80]!r}"
            )
        found[int(match[1])] = bytes.fromhex(match[2])
    if not found:
        raise OutboxError(f"{path} holds no digests")
    return found
