"""Idle relays stopped and killed (SIGSTOP, kill -9): the others are still woken at once, and
a dead relay's idle mark goes with its connection (relay/idle.py)."""

from __future__ import annotations

import os
import signal
import time

import sqlalchemy as sa

import outbox
from tests.chaos.conftest import Relays, enqueue, scalar, wait_for
from tests.integration.helpers import idle_marks

#: Far longer than any wait below: a job that runs in time was woken, not polled for.
SLOW_POLL = {"OUTBOX_POLL_INTERVAL": "120s"}
WOKEN_WITHIN = 10.0


def effects(engine: sa.Engine) -> int:
    return int(scalar(engine, "SELECT count(*) FROM chaos_effects"))


def runs_at_once(engine: sa.Engine, relays: Relays, what: str) -> None:
    before = effects(engine)
    enqueue(engine, [outbox.NewJob("chaos.effect", {})])
    started = time.monotonic()
    wait_for(lambda: effects(engine) == before + 1, WOKEN_WITHIN, what, relays)
    assert time.monotonic() - started < WOKEN_WITHIN


def test_idle_relays_stopped_or_killed_leave_the_others_woken_at_once(
    chaos_db: sa.Engine, relays: Relays
) -> None:
    first = relays.start(env=SLOW_POLL)
    relays.start(env=SLOW_POLL)
    wait_for(lambda: idle_marks(chaos_db) == 2, 30, "both relays marked idle", relays)
    runs_at_once(chaos_db, relays, "a job, both relays idle")

    os.kill(first.pid, signal.SIGSTOP)  # its mark stays: enqueues notify, the other wakes
    runs_at_once(chaos_db, relays, "a job, one relay stopped")

    os.kill(first.pid, signal.SIGKILL)
    first.wait(10)
    wait_for(lambda: idle_marks(chaos_db) == 1, 30, "the killed relay's mark to go", relays)
    runs_at_once(chaos_db, relays, "a job, one relay killed")

    for proc in relays.procs:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
    wait_for(lambda: idle_marks(chaos_db) == 0, 30, "no mark left", relays)
    enqueue(chaos_db, [outbox.NewJob("chaos.effect", {})])  # nobody idle: no NOTIFY
    before = effects(chaos_db)
    relays.start(env=SLOW_POLL)  # its first claim finds the job
    wait_for(lambda: effects(chaos_db) == before + 1, 30, "the job, by a new relay", relays)
    wait_for(lambda: idle_marks(chaos_db) == 1, 30, "the new relay marked idle", relays)
    runs_at_once(chaos_db, relays, "a job, a new relay idle")
