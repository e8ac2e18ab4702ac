"""Export sealed history with its seals, and prune what was exported (G7 across the gap).

An export is JSON Lines: a header, then for each seal a ``{"seal": {...}}`` line followed by
its rows, each written as exactly the canonical text that was hashed. Anyone can check an
export with nothing but SHA-256 (:func:`verify_export`), and `outbox prune` removes only whole
seals that an export holds, recording the prune as a link of the chain itself.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

import sqlalchemy as sa

from outbox.audit.canonical import canonical_rows
from outbox.audit.chain import Seal, append, lock_chain, unpruned_seals
from outbox.audit.verify import VerificationError
from outbox.errors import OutboxError
from outbox.sql import queries

FORMAT = "outbox-history-export"
VERSION = 1
_ALLOW = sa.text(queries["allow_prune"])
_DELETE = sa.text(queries["prune_rows"])
_IDEMPOTENCY = sa.text(queries["prune_idempotency"])


@dataclasses.dataclass(frozen=True, slots=True)
class Export:
    """The seals an export holds (without their ``row_hashes``: the rows follow each seal),
    and how many rows."""

    seals: list[Seal]
    rows: int


def export(connection: sa.Connection, out: TextIO, *, through_seal: int | None = None) -> Export:
    """Write every seal not yet pruned (up to ``through_seal``) with its rows.

    Reads in one transaction of ``connection`` (which must not be in one already), so the
    export is consistent even while relays seal and prune runs."""
    connection.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    chosen = [s for s in unpruned_seals(connection) if through_seal is None or s.id <= through_seal]
    if not chosen:
        raise OutboxError("nothing to export: no sealed history (is a relay sealing?)")
    header = {"format": FORMAT, "version": VERSION, "exported_at": datetime.now(UTC).isoformat()}
    out.write(json.dumps(header) + "\n")
    rows = 0
    for seal in chosen:
        out.write(json.dumps({"seal": _seal_json(seal)}, sort_keys=True) + "\n")
        if seal.kind != "seal":
            continue
        for text in canonical_rows(connection, seal.xid_from, seal.xid_to):
            out.write(text + "\n")
            rows += 1
    connection.rollback()
    return Export([dataclasses.replace(s, row_hashes=None) for s in chosen], rows)


def _seal_json(seal: Seal) -> dict[str, Any]:
    """The seal as an export writes it: every field but ``row_hashes``, bytes in hex."""
    out = dataclasses.asdict(seal)
    del out["row_hashes"]  # the rows themselves follow the seal
    for name in ("rows_digest", "previous_digest", "digest"):
        out[name] = None if out[name] is None else out[name].hex()
    out["sealed_at"] = seal.sealed_at.isoformat()
    return out


def _seal_of_json(raw: dict[str, Any]) -> Seal:
    """The seal an export's ``{"seal": ...}`` line holds. The fields the chain's digests
    cover, and ``sealed_at``, must be well formed; the others (the first and last history
    ids, the actor) are only informative, and taken when they are."""
    try:
        seal = Seal(
            id=int(raw["id"]),
            kind=str(raw["kind"]),
            xid_from=int(raw["xid_from"]),
            xid_to=int(raw["xid_to"]),
            row_count=int(raw["row_count"]),
            first_history_id=None,
            last_history_id=None,
            rows_digest=bytes.fromhex(raw["rows_digest"]),
            row_hashes=None,
            previous_digest=None
            if raw["previous_digest"] is None
            else bytes.fromhex(raw["previous_digest"]),
            digest=bytes.fromhex(raw["digest"]),
            actor=None,
            sealed_at=datetime.fromisoformat(raw["sealed_at"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise VerificationError(f"a seal of the export is malformed: {exc!r}") from None
    first, last, actor = (raw.get(n) for n in ("first_history_id", "last_history_id", "actor"))
    return dataclasses.replace(
        seal,
        first_history_id=first if _is_int(first) else None,
        last_history_id=last if _is_int(last) else None,
        actor=actor if isinstance(actor, str) else None,
    )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def verify_export(path: Path) -> Export:
    """Check an export alone: each seal's rows hash to it, and the seals chain together."""
    seals: list[Seal] = []
    rows = 0
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise OutboxError(f"cannot read the export {path}: {exc}") from None
    with handle:
        first = handle.readline()
        try:
            header = json.loads(first)
        except ValueError:
            header = None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise VerificationError(f"{path} is not an outbox history export")
        current: Seal | None = None
        digests = hashlib.sha256()
        count = 0
        for number, line in enumerate(handle, 2):
            line = line.rstrip(b"\n")
            if line.startswith(b'{"seal": '):
                _close(current, digests, count, path)
                current = _seal_of_json(json.loads(line)["seal"])
                if seals and current.previous_digest != seals[-1].digest:
                    raise VerificationError(
                        f"{path}:{number}: seal {current.id} does not link to seal "
                        f"{seals[-1].id} before it"
                    )
                seals.append(current)
                digests, count = hashlib.sha256(), 0
            elif current is None or current.kind != "seal":
                raise VerificationError(f"{path}:{number}: a row outside any seal")
            else:
                digests.update(hashlib.sha256(line).digest())
                count += 1
                rows += 1
        _close(current, digests, count, path)
    if not seals:
        raise VerificationError(f"{path} holds no seals")
    return Export(seals, rows)


def _close(seal: Seal | None, digests: Any, count: int, path: Path) -> None:
    if seal is None:
        return
    if seal.kind == "seal" and (count != seal.row_count or digests.digest() != seal.rows_digest):
        raise VerificationError(
            f"{path}: seal {seal.id}: its {count} exported rows do not hash to the seal "
            f"({seal.row_count} rows): the export was changed"
        )
    if seal.own_digest() != seal.digest:
        raise VerificationError(f"{path}: seal {seal.id}: its digest does not match its fields")


@dataclasses.dataclass(frozen=True, slots=True)
class Pruned:
    seals: int
    rows: int
    prune_seal: int | None
    idempotency_keys: int


def prune(
    connection: sa.Connection,
    *,
    export_path: Path | None,
    older_than: timedelta,
    actor: str,
    now: datetime | None = None,
) -> Pruned:
    """Remove whole sealed ranges older than ``older_than`` that the export at
    ``export_path`` holds (checked first), and expired idempotency keys."""
    seals, rows, prune_id = 0, 0, None
    if export_path is not None:
        exported = verify_export(export_path)
        cutoff = (now or datetime.now(UTC)) - older_than
        seals, rows, prune_id = _prune_history(connection, exported, cutoff, actor)
    keys = prune_idempotency(connection)
    return Pruned(seals, rows, prune_id, keys)


def _prune_history(
    connection: sa.Connection, exported: Export, cutoff: datetime, actor: str
) -> tuple[int, int, int | None]:
    in_file = {s.id: s for s in exported.seals}
    candidates = [s for s in unpruned_seals(connection) if s.kind == "seal"]
    chosen: list[Seal] = []
    for seal in candidates:
        if seal.sealed_at >= cutoff or seal.id not in in_file:
            break  # only a run of whole seals from the oldest on
        if in_file[seal.id].digest != seal.digest:
            raise VerificationError(
                f"seal {seal.id} differs between the database and the export: prune refused"
            )
        chosen.append(seal)
    connection.rollback()  # the reads above end here; the prune is a transaction of its own
    if not chosen:
        return 0, 0, None
    xid_from, xid_to = chosen[0].xid_from, chosen[-1].xid_to
    expected = sum(s.row_count for s in chosen)
    with connection.begin():
        previous, _ = lock_chain(connection)
        connection.execute(_ALLOW, {"xid": xid_to})
        deleted = connection.execute(_DELETE, {"xid_from": xid_from, "xid_to": xid_to}).rowcount
        if deleted != expected:
            raise VerificationError(
                f"history of seals {chosen[0].id} to {chosen[-1].id} holds {deleted} rows, the "
                f"seals {expected}: prune refused; run `outbox audit verify`"
            )
        # A prune's rows digest is the digest of the last seal it removes.
        link = append(
            connection, previous, "prune", xid_from, xid_to, deleted, chosen[-1].digest,
            first_history_id=chosen[0].first_history_id,
            last_history_id=chosen[-1].last_history_id, actor=actor,
        )  # fmt: skip
    return len(chosen), deleted, link.id


def prune_idempotency(connection: sa.Connection, batch: int = 10_000) -> int:
    """Forget idempotency keys past their retention, a batch per transaction."""
    total = 0
    while True:
        with connection.begin():
            removed = connection.execute(_IDEMPOTENCY, {"limit": batch}).rowcount
        total += removed
        if removed < batch:
            return total
