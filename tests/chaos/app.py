"""The application the chaos tests' relays run: ``--app tests.chaos.app:registry``.

Every effect is a row in chaos_effects written through the completion session, so a
test can count how many times each job's effect committed.
"""

from __future__ import annotations

import ctypes
import os
import time
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import Session

import outbox

registry = outbox.Registry()

EFFECT = sa.text("INSERT INTO chaos_effects (job, key, seq, pid) VALUES (:job, :key, :seq, :pid)")


@registry.handler("chaos.effect", max_attempts=20, timeout=30)
def effect(job: outbox.Job, session: Session) -> None:
    session.execute(
        EFFECT,
        {"job": job.uuid, "key": job.key, "seq": job.payload.get("seq"), "pid": os.getpid()},
    )
    if pause := job.payload.get("sleep"):
        time.sleep(pause)


@registry.handler("chaos.crash", max_attempts=3, timeout=30)
def crash(job: outbox.Job) -> None:
    os._exit(17)


@registry.handler("chaos.plain", max_attempts=20, timeout=30)
def plain(job: outbox.Job) -> None:
    if pause := job.payload.get("sleep"):
        time.sleep(pause)


@registry.handler("chaos.crash_free_failure", timeout=30)
def crash_free_failure(job: outbox.Job) -> None:
    """Fails like any handler can, the process unharmed (its attempts: the relay's default)."""
    raise RuntimeError("refused, without crashing")


@registry.handler("chaos.segfault", max_attempts=3, timeout=30)
def segfault(job: outbox.Job) -> None:
    """A real segmentation fault, in the handler's own thread: os.kill(SIGSEGV) would reach
    the main thread, and the handler could return before the process died."""
    ctypes.string_at(0)


@registry.handler("chaos.hang", max_attempts=20, timeout=3600)
def hang(job: outbox.Job) -> None:
    """Says it started (a file), then never returns."""
    Path(job.payload["started"]).touch()
    while True:
        time.sleep(1)
