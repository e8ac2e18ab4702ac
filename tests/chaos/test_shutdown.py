"""Stopping relays: a hung handler cannot keep a relay from exiting, and one Ctrl-C to a
supervised relay's whole process group is one request to drain, not two (G2)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

import outbox
from tests.chaos.conftest import Relays, effects_per_job, enqueue, scalar, wait_for


def test_sigterm_with_a_hung_handler_exits_0_after_the_grace_period(
    chaos_db: sa.Engine, relays: Relays, tmp_path: Path
) -> None:
    started = tmp_path / "started"
    [handle] = enqueue(chaos_db, [outbox.NewJob("chaos.hang", {"started": str(started)})])
    relay = relays.start("--concurrency", "2", env={"OUTBOX_SHUTDOWN_GRACE": "2s"})
    wait_for(started.exists, 30, "the handler to start", relays)
    signalled = time.monotonic()
    relay.send_signal(signal.SIGTERM)
    assert relay.wait(20) == 0, relays.log_tail()
    assert time.monotonic() - signalled < 10  # the grace period, and a little to leave
    assert "handlers still running past the grace period" in relays.log_tail()
    # Its job kept its lease, and is given back once that expires (OUTBOX_LEASE=3s).
    assert scalar(chaos_db, "SELECT state FROM outbox_jobs WHERE uuid = :u", u=handle.uuid) in {
        "running",
        "pending",
    }


@pytest.mark.timeout(180)
def test_ctrl_c_to_a_supervised_relays_process_group_drains_it(
    chaos_db: sa.Engine, relays: Relays
) -> None:
    handles = enqueue(chaos_db, [outbox.NewJob("chaos.effect", {"sleep": 1.0}) for _ in range(16)])
    # Small claims, so that the first process up does not take every job.
    supervisor = relays.start(
        "--processes", "2", "--concurrency", "2", env={"OUTBOX_CLAIM_BATCH": "2"}
    )
    # Both processes hold handlers mid-run.
    wait_for(
        lambda: scalar(chaos_db, "SELECT count(DISTINCT relay) FROM outbox_jobs "
                                 "WHERE state = 'running'") == 2,
        60, "both processes to run jobs", relays,
    )  # fmt: skip
    os.killpg(supervisor.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends
    assert supervisor.wait(60) == 0, relays.log_tail()
    with chaos_db.connect() as conn:
        lost = conn.execute(sa.text(
            "SELECT count(*) FROM outbox_history WHERE reason LIKE 'lease expired%'"
        )).scalar()  # fmt: skip
    assert lost == 0, relays.log_tail()  # every handler in flight finished; none was cut off
    assert scalar(chaos_db, "SELECT count(*) FROM outbox_jobs WHERE state = 'running'") == 0
    done = effects_per_job(chaos_db)
    assert set(done.values()) <= {1}
    assert set(done) <= {h.uuid for h in handles}


@pytest.mark.timeout(120)
def test_sigterm_while_the_children_still_start_is_a_clean_stop(
    chaos_db: sa.Engine, relays: Relays
) -> None:
    """A child stopped by SIGTERM before it set its handlers (it was still importing) had
    claimed nothing: the supervisor reports a clean stop, not a failure."""
    supervisor = relays.start("--processes", "2")
    logs = relays.logs / "relay-0.log"

    def both_spawned() -> bool:
        return logs.read_text(errors="replace").count('"relay process started"') >= 2

    wait_for(both_spawned, 60, "the supervisor to start both children", relays)
    supervisor.send_signal(signal.SIGTERM)  # the children are importing (about 0.35 s)
    assert supervisor.wait(60) == 0, relays.log_tail()
    assert scalar(chaos_db, "SELECT count(*) FROM outbox_history WHERE event = 'claimed'") == 0
