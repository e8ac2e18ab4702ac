"""Chaos tests run real relay processes (``python -m outbox relay``) and really kill, stop
and cut them. Every wait has a deadline, and every process is killed at teardown."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

import outbox

ROOT = Path(__file__).resolve().parents[2]
FAST_ENV = {
    "OUTBOX_LEASE": "3s",
    "OUTBOX_POLL_INTERVAL": "0.2s",
    "OUTBOX_RESCUE_INTERVAL": "0.5s",
    "OUTBOX_SHUTDOWN_GRACE": "10s",
}


class Relays:
    """Relay processes of one test."""

    def __init__(self, dsn: str, logs: Path) -> None:
        self.dsn = dsn
        self.logs = logs
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(
        self, *args: str, env: dict[str, str] | None = None, wrapper: tuple[str, ...] = ()
    ) -> subprocess.Popen[bytes]:
        """A relay process; ``wrapper`` is a command it runs under (``faketime -f +600s``)."""
        log = (self.logs / f"relay-{len(self.procs)}.log").open("wb")
        proc = subprocess.Popen(
            [*wrapper, sys.executable, "-m", "outbox", "--dsn", self.dsn, "relay",
             "--app", "tests.chaos.app:registry", "--log-format", "json",
             *(() if "--metrics-addr" in args else ("--metrics-addr", "off")), *args],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, **FAST_ENV, **(env or {})},
            start_new_session=True,  # a group of its own: teardown kills its children too
        )  # fmt: skip
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with_kill(proc)

    def log_tail(self) -> str:
        return "\n".join(
            f"--- {p.name}\n" + p.read_text(errors="replace")[-3000:]
            for p in sorted(self.logs.glob("relay-*.log"))
        )


def with_kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the relay and every process of its group (a supervisor's children)."""
    for sig in (signal.SIGCONT, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)


@pytest.fixture
def chaos_db(db: sa.Engine) -> sa.Engine:
    with db.begin() as conn:
        conn.execute(sa.text("DROP TABLE IF EXISTS chaos_effects"))
        conn.execute(CREATE_EFFECTS)
    return db


#: The table every effect of tests/chaos/app.py is a row of.
CREATE_EFFECTS = sa.text(
    "CREATE TABLE chaos_effects (id bigserial, job uuid, key text, seq int, pid int, "
    "at timestamptz DEFAULT clock_timestamp())"
)


@pytest.fixture
def relays(dsn: str, tmp_path: Path) -> Iterator[Relays]:
    made = Relays(dsn, tmp_path)
    yield made
    made.stop_all()


def enqueue(engine: sa.Engine, jobs: list[outbox.NewJob]) -> list[outbox.Enqueued]:
    with Session(engine) as session:
        handles = outbox.enqueue_many(session, jobs)
        session.commit()
    return handles


def wait_for(
    condition: Callable[[], Any], timeout: float, what: str, relays: Relays | None = None
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(0.05)
    tail = relays.log_tail() if relays else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{tail}")


def scalar(engine: sa.Engine, sql: str, **params: Any) -> Any:
    with engine.connect() as conn:
        return conn.execute(sa.text(sql), params).scalar()


def effects_per_job(engine: sa.Engine) -> dict[Any, int]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT job, count(*) FROM chaos_effects GROUP BY job"))
        return {r[0]: r[1] for r in rows}
