"""The application of tests/integration/test_relay_collector.py: each job writes down the
cyclic collector's state in the relay process that ran it."""

from __future__ import annotations

import gc
import os

import sqlalchemy as sa
from sqlalchemy.orm import Session

import outbox

registry = outbox.Registry()

SEEN = sa.text(
    "INSERT INTO collector_seen (pid, enabled, frozen, threshold) "
    "VALUES (:pid, :enabled, :frozen, :threshold)"
)


@registry.handler("collector.state", queue="collector", timeout=30)
def state(job: outbox.Job, session: Session) -> None:
    session.execute(
        SEEN,
        {
            "pid": os.getpid(),
            "enabled": gc.isenabled(),
            "frozen": gc.get_freeze_count(),
            "threshold": gc.get_threshold()[0],
        },
    )
