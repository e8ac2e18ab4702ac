"""A relay whose clock is off still sleeps until the next scheduled job: every wait is
measured on the database's clock, the one run_at is written by."""

from __future__ import annotations

import re
import shutil
import socket
import time
import urllib.request
from datetime import timedelta

import pytest
import sqlalchemy as sa

import outbox
from tests.chaos.conftest import Relays, enqueue, wait_for

FAKETIME = shutil.which("faketime")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def claims(port: int) -> float:
    """The relay's claims so far; -1 while it does not answer yet."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
    except OSError:
        return -1.0
    found = re.search(r"^outbox_claim_batch_size_count (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


@pytest.mark.skipif(FAKETIME is None, reason="needs faketime (Debian package faketime)")
def test_a_relay_ten_minutes_ahead_does_not_spin_on_a_scheduled_job(
    chaos_db: sa.Engine, relays: Relays
) -> None:
    assert FAKETIME is not None
    enqueue(chaos_db, [outbox.NewJob("chaos.plain", {}, delay=timedelta(seconds=240))])
    port = free_port()
    relays.start(
        "--metrics-addr", f"127.0.0.1:{port}",
        env={"OUTBOX_POLL_INTERVAL": "1s"}, wrapper=(FAKETIME, "-f", "+600s"),
    )  # fmt: skip
    wait_for(lambda: claims(port) > 0, 30, "the relay to serve metrics and claim", relays)
    before = claims(port)
    time.sleep(3)  # the measurement window itself: claims counted over 3 seconds
    made = claims(port) - before
    # Idle, it looks once a poll interval (1 s), or on a notification: a few claims, not
    # the hundreds a second of a relay that thinks the job is overdue.
    assert made <= 10, f"{made} claims in 3 s\n{relays.log_tail()}"
