"""A supervisor hands its processes the DSN where other local users cannot read it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from tests.integration.relay_harness import wait_for

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "s3cret-pw"


def cmdlines() -> list[tuple[int, str]]:
    """Every process's command line that ``ps`` would show this user."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = proc.info["cmdline"]
        if cmdline:
            found.append((proc.info["pid"], " ".join(cmdline)))
    return found


def relay_pids(engine: sa.Engine) -> set[int]:
    with engine.connect() as conn:
        return {
            int(pid) for pid in conn.execute(sa.text("SELECT pid FROM outbox_relays")).scalars()
        }


def test_supervisor_passes_the_dsn_to_its_processes_off_their_command_line(
    dsn: str, engine: sa.Engine, tmp_path: Path
) -> None:
    url = make_url(dsn).set(password=PASSWORD)
    secret_dsn = url.render_as_string(hide_password=False)
    assert PASSWORD in secret_dsn
    log_path = tmp_path / "relay.log"
    env = {**os.environ, "OUTBOX_DSN": secret_dsn, "OUTBOX_LEASE": "3s"}
    with log_path.open("wb") as log:
        supervisor = subprocess.Popen(
            [sys.executable, "-m", "outbox", "relay", "--app", "tests.chaos.app:registry",
             "--processes", "2", "--metrics-addr", "off", "--log-format", "json",
             "--queues", "supervisor-env"],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip
    try:
        parent = psutil.Process(supervisor.pid)

        def both_up() -> set[int] | None:
            """Two children, each connected to the database and heartbeating as a relay."""
            assert supervisor.poll() is None, log_path.read_text()
            children = {child.pid for child in parent.children()}
            return children if len(children) == 2 and children <= relay_pids(engine) else None

        children = wait_for(both_up, timeout=60, what="both relay processes to be up")
        leaked = [(pid, line) for pid, line in cmdlines() if PASSWORD in line]
        assert leaked == [], f"the password is on a command line: {leaked}"
        assert children <= {pid for pid, _ in cmdlines()}, "the children's cmdlines were read"
    finally:
        supervisor.send_signal(signal.SIGTERM)
        try:
            code = supervisor.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(supervisor.pid, signal.SIGKILL)
            supervisor.wait(10)
            raise
    assert code == 0, log_path.read_text()
