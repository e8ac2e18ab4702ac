"""One register of advisory locks (outbox/locks.py): every pair distinct, and the SQL that
writes a lock's numbers out uses the register's."""

from __future__ import annotations

import re
from pathlib import Path

from outbox import locks

ROOT = Path(__file__).resolve().parents[2]
#: A lock taken or released with its numbers written out: pg_advisory[_xact]_lock(2829, 5),
#: pg_try_advisory_lock_shared(2829, 6), pg_advisory_unlock(2829, 6) and the like.
WRITTEN_OUT = re.compile(
    r"pg_(?:try_)?advisory(?:_xact)?_(?:un)?lock(?:_shared)?\(\s*(\d+)\s*,\s*(\d+)\s*\)"
)


def test_every_lock_is_a_pair_of_its_own() -> None:
    pairs = list(locks.ALL.values())
    assert len(set(pairs)) == len(pairs)
    assert all(cls == locks.CLASS for cls, _ in pairs)
    assert locks.KEY_CLASS != locks.CLASS  # per-key locks never meet the chores' locks


def test_sql_that_writes_a_lock_out_uses_a_registered_pair() -> None:
    found = {}
    for path in [*ROOT.glob("outbox/sql/*.sql"), *ROOT.glob("relay/sql/*.sql"),
                 *ROOT.glob("migrations/versions/*.py")]:  # fmt: skip
        for match in WRITTEN_OUT.finditer(path.read_text()):
            found[(path.name, match[0])] = (int(match[1]), int(match[2]))
    assert found, "the chain lock is written out in SQL"
    registered = set(locks.ALL.values())
    assert {where: pair for where, pair in found.items() if pair not in registered} == {}
    assert set(found.values()) == {locks.CHAIN, locks.IDLE, locks.GATE}
