"""``outbox relay`` takes its metrics address from OUTBOX_METRICS_ADDR when --metrics-addr is
not given: an address, or ``off``; a bad value is refused at start-up, naming the variable."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa

import outbox
from tests.integration.relay_harness import live_jobs, wait_for
from tests.integration.test_observability import ROOT, enqueue, free_port, get


@contextmanager
def relay(dsn: str, log: Path, env: dict[str, str], *options: str) -> Iterator[None]:
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "outbox", "--dsn", dsn, "relay", "--app",
             "tests.chaos.app:registry", "--log-format", "json", *options],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env},
        )  # fmt: skip
        try:
            yield
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                code = process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()  # left running, it would hold the gauge lock for later tests
                process.wait(10)
                tail = log.read_text()
                raise AssertionError(f"SIGTERM did not stop the relay:\n{tail}") from None
    assert code == 0, log.read_text()


def answers(url: str) -> bool:
    """Whether ``url`` answers 200 (nothing listens there before the relay is up)."""
    try:
        return get(url)[0] == 200
    except OSError:
        return False


def events(log: Path) -> list[dict[str, object]]:
    lines = log.read_text().splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


def test_the_relay_serves_metrics_where_the_variable_says(
    db: sa.Engine, dsn: str, tmp_path: Path
) -> None:
    port = free_port()
    log = tmp_path / "relay.log"
    with relay(dsn, log, {"OUTBOX_METRICS_ADDR": f"127.0.0.1:{port}"}):
        wait_for(lambda: answers(f"http://127.0.0.1:{port}/readyz"), timeout=30,
                 what="the relay's endpoints on the variable's address")  # fmt: skip
        status, text = get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200
        assert "outbox_jobs_completed_total" in text
    served = [e for e in events(log) if e["event"] == "metrics served"]
    assert [e["address"] for e in served] == [f"127.0.0.1:{port}"]


def test_off_in_the_variable_serves_nothing_and_the_relay_runs(
    db: sa.Engine, dsn: str, tmp_path: Path
) -> None:
    enqueue(db, [outbox.NewJob("chaos.plain", {})])
    log = tmp_path / "relay.log"
    with relay(dsn, log, {"OUTBOX_METRICS_ADDR": "off"}):
        wait_for(lambda: live_jobs(db) == 0, timeout=30, what="the job")
    assert not [e for e in events(log) if e["event"] == "metrics served"]


def test_the_option_wins_over_the_variable(db: sa.Engine, dsn: str, tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "relay.log"
    env = {"OUTBOX_METRICS_ADDR": "not an address"}
    with relay(dsn, log, env, "--metrics-addr", f"127.0.0.1:{port}"):
        wait_for(lambda: answers(f"http://127.0.0.1:{port}/healthz"), timeout=30,
                 what="the option's address")  # fmt: skip


def test_a_bad_variable_is_refused_at_start_naming_it(dsn: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "outbox", "--dsn", dsn, "relay", "--app",
         "tests.chaos.app:registry"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "OUTBOX_METRICS_ADDR": "nonsense"},
    )  # fmt: skip
    assert result.returncode == 1
    assert (
        "Error: OUTBOX_METRICS_ADDR 'nonsense' should be host:port, or [IPv6 address]:port"
        in result.stderr
    )
