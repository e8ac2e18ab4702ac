"""What the publishing benchmarks share: the fill, and a relay at its defaults draining it.

Each ``bench.publish_<target>`` measures the raw client its own fastest way, then hands
:func:`drain` the same messages as publish jobs: a relay process at its defaults (only the
options a run asks for) publishes them, timed from the relay's start until no job waits, and
from its first claim to its last completion (history's own times).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy.orm import Session

import outbox
from bench import compile_sources
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
    compile_sources()
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


def relay_options(processes: int = 1, concurrency: int | None = None) -> tuple[str, ...]:
    """The relay's options for ``--processes`` and ``--concurrency`` as a run asks: none
    at the relay's defaults (one process, its own thread count)."""
    options: list[str] = []
    if concurrency:
        options += ["--concurrency", str(concurrency)]
    if processes != 1:
        options += ["--processes", str(processes)]
    return tuple(options)


def relay_name(processes: int = 1, concurrency: int | None = None) -> str:
    """How a report names the relay those options run: "its defaults" when none are set."""
    parts = [f"{concurrency} threads"] if concurrency else []
    if processes != 1:
        parts.append(f"{processes} processes")
    return ", ".join(parts) or "its defaults"


def add_relay_arguments(parser: argparse.ArgumentParser) -> None:
    """``--processes`` and ``--concurrency``, the relay's own options, for a publish bench."""
    parser.add_argument(
        "--processes", type=int, default=1, help="relay processes (default: 1, the relay's own)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=None, help="the relay's threads (default: its own)"
    )


@dataclasses.dataclass(frozen=True)
class Round:
    """One round: the raw client's seconds, then the relay's drain of the same messages."""

    raw: float
    outbox: Drain


def interleaved(rounds: int, raw: Callable[[], float], outbox: Callable[[], Drain]) -> list[Round]:
    """``rounds`` rounds of the raw client then outbox, back to back: a broker or a machine
    that is slower for a while slows both sides of a round, not one side of the comparison."""
    done = []
    for n in range(1, rounds + 1):
        seconds = raw()
        drained = outbox()
        print(f"round {n}: raw {seconds:.2f}s; outbox {drained.elapsed:.2f}s from the relay's "
              f"start, {drained.working:.2f}s first claim to last completion")  # fmt: skip
        done.append(Round(seconds, drained))
    return done


def report(runs: Sequence[Round], messages: int, raw_name: str, outbox_name: str) -> int:
    """Medians with min and max over the rounds, and outbox as a share of the raw client's
    median rate; the exit status 1 if any relay did not exit cleanly."""

    def spread(rates: list[float]) -> str:
        ordered = sorted(rates)
        middle = statistics.median(ordered)
        if len(ordered) == 1:
            return f"{middle:,.0f} msg/s"
        return f"{middle:,.0f} msg/s (min {ordered[0]:,.0f}, max {ordered[-1]:,.0f})"

    raw = [messages / r.raw for r in runs]
    start = [messages / r.outbox.elapsed for r in runs]
    working = [messages / r.outbox.working for r in runs]
    limit = statistics.median(raw)
    print(f"raw {raw_name}, median of {len(runs)}: {spread(raw)}")
    print(
        f"outbox relay at {outbox_name}: from the relay's start {spread(start)} = "
        f"{statistics.median(start) / limit:.0%} of raw; first claim to last completion "
        f"{spread(working)} = {statistics.median(working) / limit:.0%} of raw"
    )
    codes = {r.outbox.code for r in runs}
    print(f"relay exit codes: {', '.join(map(str, sorted(codes)))}")
    return 0 if codes == {0} else 1
