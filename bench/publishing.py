"""What the publishing benchmarks share: the fill, and a relay at its defaults draining it.

Each ``bench.publish_<target>`` measures the raw client its own fastest way, then hands
:func:`drain` the same messages as publish jobs: a relay process at its defaults (only the
options a run asks for) publishes them, timed from the relay's start until no job waits, and
from its first claim to its last completion (history's own times).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy.orm import Session

import outbox
from outbox.publish import Publish

ROOT = Path(__file__).resolve().parent.parent

#: From the first claim to the last completion, in history's times.
WORKING = """
    SELECT extract(epoch FROM max(at) FILTER (WHERE event = 'succeeded')
                             - min(at) FILTER (WHERE event = 'claimed'))
    FROM outbox_history
"""
#: Jobs not yet done: a delivered job's row is gone, a dead one's stays.
WAITING = "SELECT EXISTS (SELECT 1 FROM outbox_jobs WHERE state <> 'dead')"


@dataclasses.dataclass(frozen=True)
class Drain:
    #: Seconds from the relay's start until no publish job waits.
    elapsed: float
    #: Seconds from its first claim to its last completion.
    working: float
    #: The relay's exit status after SIGTERM.
    code: int


class Counting(Protocol):
    """A no-op consumer: it counts what it read."""

    @property
    def consumed(self) -> int: ...


def wait_consumed(feed: Counting, n: int, timeout: float) -> None:
    """Until the consumer has read ``n`` messages, or give up after ``timeout`` seconds."""
    deadline = time.perf_counter() + timeout
    while feed.consumed < n:
        if time.perf_counter() > deadline:
            raise SystemExit(f"the consumer read {feed.consumed} of {n} messages in {timeout}s")
        time.sleep(0.005)


def fill(engine: sa.Engine, messages: Iterable[Publish]) -> None:
    """The publish jobs in one transaction, then ANALYZE, as every bench fill does."""
    with Session(engine) as session:
        outbox.publish.publish_many(session, list(messages))
        session.commit()
    with engine.begin() as conn:
        conn.execute(sa.text("ANALYZE"))


def drain(
    engine: sa.Engine,
    app: str,
    env: dict[str, str],
    *,
    messages: int,
    timeout: float = 600,
    options: Sequence[str] = (),
    after: Callable[[], None] | None = None,
) -> Drain:
    """Run ``outbox relay --app app`` until every job is done; refuse a run where any ended
    dead or fewer than ``messages`` succeeded. ``after`` runs before the relay stops (waiting
    for a consumer to count the last messages, say)."""
    relay = subprocess.Popen(
        [sys.executable, "-m", "outbox", "relay", "--app", app, "--log-level", "warning",
         "--metrics-addr", "off", *options],
        cwd=ROOT, env={**os.environ, **env},
    )  # fmt: skip
    started = time.perf_counter()
    try:
        while time.perf_counter() < started + timeout:
            with engine.connect() as conn:
                if not conn.execute(sa.text(WAITING)).scalar():
                    break
            time.sleep(0.02)
        else:
            raise SystemExit(f"the relay did not publish {messages} messages in {timeout:g}s")
        elapsed = time.perf_counter() - started
        if after is not None:
            after()
        with engine.connect() as conn:
            working = float(conn.execute(sa.text(WORKING)).scalar_one())
            dead = conn.execute(sa.text("SELECT count(*) FROM outbox_jobs")).scalar_one()
            succeeded = conn.execute(
                sa.text("SELECT count(*) FROM outbox_history WHERE event = 'succeeded'")
            ).scalar_one()
        if dead or succeeded != messages:
            raise SystemExit(
                f"{succeeded} of {messages} delivered, {dead} dead: see the relay's log"
            )
    finally:
        relay.send_signal(signal.SIGTERM)
        code = relay.wait(60)
    return Drain(elapsed, working, code)
