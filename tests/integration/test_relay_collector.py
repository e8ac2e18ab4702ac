"""A relay started by ``outbox relay`` runs its jobs with the cyclic collector on, its
start-up heap frozen out of it, whether it starts alone or is forked by a supervisor
(collection is paused while it starts: outbox/collector.py)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from outbox_relay.worker import GC_YOUNG_THRESHOLD
from sqlalchemy.orm import Session

import outbox
from tests.integration.relay_harness import wait_for

ROOT = Path(__file__).resolve().parents[2]
TABLE = sa.text(
    "CREATE TABLE IF NOT EXISTS collector_seen (pid int, enabled bool, frozen int, threshold int)"
)


@pytest.mark.parametrize("processes", [1, 2])
def test_a_relay_runs_its_jobs_with_the_collector_on_and_its_start_frozen(
    dsn: str, db: sa.Engine, tmp_path: Path, processes: int
) -> None:
    with db.begin() as conn:
        conn.execute(TABLE)
        conn.execute(sa.text("TRUNCATE collector_seen"))
    with Session(db) as session:
        outbox.enqueue_many(
            session, [outbox.NewJob("collector.state", {}, queue="collector") for _ in range(40)]
        )
        session.commit()
    log_path = tmp_path / "relay.log"
    with log_path.open("wb") as log:
        relay = subprocess.Popen(
            [sys.executable, "-m", "outbox", "relay",
             "--app", "tests.integration.collector_app:registry",
             "--processes", str(processes), "--metrics-addr", "off", "--queues", "collector"],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "OUTBOX_DSN": dsn},
        )  # fmt: skip
    try:

        def all_ran() -> Sequence[sa.Row[Any]] | None:
            assert relay.poll() is None, log_path.read_text()
            with db.connect() as conn:
                seen = conn.execute(sa.text("SELECT * FROM collector_seen")).all()
            return seen if len(seen) == 40 else None

        seen = wait_for(all_ran, timeout=60, what="the 40 jobs to run")
    finally:
        relay.send_signal(signal.SIGTERM)
        try:
            relay.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(relay.pid, signal.SIGKILL)
            relay.wait(10)
            raise
    assert {(enabled, threshold) for _, enabled, _, threshold in seen} == {
        (True, GC_YOUNG_THRESHOLD)
    }
    # The start-up heap (SQLAlchemy, psycopg, the relay) is tens of thousands of objects.
    assert min(frozen for _, _, frozen, _ in seen) > 20_000
    assert relay.pid not in {pid for pid, _, _, _ in seen} or processes == 1
