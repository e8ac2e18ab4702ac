"""Every advisory lock outbox takes, in one register.

Session locks elect one relay among many for a chore, and transaction locks order writers.
Two uses of one pair would serialise unrelated work, or let two leaders act at once, so each
pair is named here and nowhere else. SQL that takes a lock writes the numbers out (a
statement cannot import Python); tests/unit/test_locks.py checks that it uses these.
"""

from __future__ import annotations

#: The class (first key) of every outbox lock below: 2829.
CLASS = 0x0B0D

#: Session lock: one `outbox migrate` at a time.
MIGRATION = (CLASS, 1)
#: Session lock: the relay that reads and exports the queue gauges.
GAUGES = (CLASS, 2)
#: Session lock: the relay that seals history into the digest chain (G7).
SEALER = (CLASS, 3)
#: Session lock: the relay that vacuums outbox_jobs when autovacuum falls behind.
UPKEEP = (CLASS, 4)
#: Transaction lock: whoever appends a link to the seal chain (a seal or a prune), in
#: outbox/sql/audit.sql (chain_lock) and the seal-check trigger of migration outbox_0008.
CHAIN = (CLASS, 5)
#: Session lock, shared: held by every idle relay, on a connection of its own (relay/idle.py).
#: Enqueue sends NOTIFY only while some relay holds it (outbox/sql/enqueue.sql, relay_idle).
IDLE = (CLASS, 6)
#: Transaction lock: shared by each enqueue statement that looked for an idle relay, until its
#: transaction ends; taken exclusively by a relay that has just taken IDLE, waiting 5 ms at
#: most (relay/idle.py). Enqueue only tries it, so it never queues behind that wait.
GATE = (CLASS, 7)

#: The class of enqueue's per-key transaction locks, (KEY_CLASS, hashtext(key)) (G4).
KEY_CLASS = 0x0B0C

ALL = {"MIGRATION": MIGRATION, "GAUGES": GAUGES, "SEALER": SEALER, "UPKEEP": UPKEEP,
       "CHAIN": CHAIN, "IDLE": IDLE, "GATE": GATE}  # fmt: skip
