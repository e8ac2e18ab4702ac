"""Upkeep of the live-job table: vacuum it when dead rows pile up and autovacuum has not.

Every job is inserted, updated and deleted within seconds, so `outbox_jobs` gathers dead
rows as fast as jobs run; left alone they lengthen every claim's index scan (a 1,000,000-job
run without vacuum loses 40% of its throughput). Autovacuum, with the settings migration
`outbox_0005` gives the table, normally keeps up. Where it is off, slow, or blocked, one relay
at a time (an advisory lock) vacuums the table itself once its dead rows pass a threshold,
provided its role may (the table's owner); otherwise it says so once and leaves it to the
operator.
"""

from __future__ import annotations

import time

import sqlalchemy as sa
import structlog

from outbox import locks

from .leader import Leadership
from .service import Service

#: Session-level advisory lock of the one relay that looks after the table: (class, id).
UPKEEP_LOCK = locks.UPKEEP
EVERY = 5.0  # seconds between looks at the table's statistics
#: Dead rows that call for a vacuum: this many, or this many times the live rows, provided
#: there are at least MIN_DEAD_ROWS. Fewer cost a claim's index scan next to nothing, and a
#: small table in a steady state always has a few times its live rows dead: vacuuming those
#: every few seconds is work that helps nobody.
DEAD_ROWS = 200_000
DEAD_RATIO = 4
MIN_DEAD_ROWS = 50_000
#: Seconds after any vacuum of the table, ours or autovacuum's, before the next one.
QUIET = 60.0

DEAD = sa.text(
    "SELECT n_dead_tup, n_live_tup, "
    "extract(epoch FROM now() - greatest(last_vacuum, last_autovacuum)) AS since "
    "FROM pg_stat_user_tables WHERE relid = 'outbox_jobs'::regclass"
)

#: Who may vacuum a table: its owner (or a member of the owning role), or a superuser.
MAY_VACUUM = sa.text(
    "SELECT pg_has_role(relowner, 'MEMBER') FROM pg_class WHERE oid = 'outbox_jobs'::regclass"
)

log = structlog.get_logger("outbox.relay")


class Upkeep(Service):
    name = "upkeep"
    failure = "table upkeep failed; will try again"

    def __init__(self, engine: sa.Engine) -> None:
        super().__init__(EVERY)
        # VACUUM cannot run inside a transaction: a connection in autocommit of its own.
        autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._leadership = Leadership(autocommit, UPKEEP_LOCK)
        self._allowed = True

    def tick(self) -> None:
        if self._leadership.take() is not None:
            self.look()
        if not self._allowed:
            self.stop()  # its role may not vacuum: said once, not tried again

    def recover(self) -> None:
        self._leadership.resign()

    def finish(self) -> None:
        self._leadership.resign()

    def look(self) -> bool:
        """Vacuum `outbox_jobs` if its dead rows call for it; True if it did."""
        leader = self._leadership.connection
        assert leader is not None, "look() is for the leader"
        row = leader.execute(DEAD).first()
        if row is None:
            return False
        dead, live = int(row.n_dead_tup), int(row.n_live_tup)
        if dead < MIN_DEAD_ROWS or (dead < DEAD_ROWS and dead < DEAD_RATIO * max(live, 1)):
            return False
        if row.since is not None and float(row.since) < QUIET:
            return False  # just vacuumed: its statistics lag, or the dead rows are new
        if not leader.execute(MAY_VACUUM).scalar():
            # PostgreSQL only warns and skips a table the role may not vacuum.
            self._allowed = False
            log.warning(
                "outbox_jobs needs a vacuum its relays may not run: keep autovacuum on "
                "(docs/howto/run-relays.md)",
                dead_rows=dead,
            )
            return False
        started = time.monotonic()
        leader.exec_driver_sql("VACUUM (ANALYZE) outbox_jobs")
        log.info(
            "vacuumed outbox_jobs", dead_rows=dead, seconds=round(time.monotonic() - started, 2)
        )
        return True
