"""``outbox ui``: it starts only where it is safe, says clearly why not, serves the console for
real, and runs on a read-only database role."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlalchemy.orm import Session
from starlette.testclient import TestClient

import outbox
from outbox.audit import seal
from outbox.cli import cli
from outbox.console import ConsoleConfig, create_app
from tests.integration.helpers import login_role

OUTBOX = Path(sys.executable).with_name("outbox")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def run(dsn: str, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["--dsn", dsn, "ui", *args], env=env)
    return result.exit_code, result.output


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--addr", "0.0.0.0:9465"], "reachable from other machines and no one would have to sign"),
        (
            ["--addr", "0.0.0.0:9465", "--allow-no-sign-in", "--allow-actions"],
            "actions are recorded with who took them, and no one signs in here",
        ),
        (["--basic-auth", "a:b", "--user-header", "X-User"], "by basic auth or by a proxy"),
        (["--user-header", "X User"], "must be a header name"),
        (["--addr", "9465"], "must be host:port"),
        (["--addr", "127.0.0.1:99999"], "must be host:port"),
        (["--basic-auth", "alice"], "must be user:password"),
        (["--basic-auth", "alice:a,alice:b"], "names user 'alice' twice"),
        (["--base-path", "outbox/"], "must look like /outbox"),
        (["--statement-timeout", "soon"], "is not a duration"),
        (["--statement-timeout", "10ms"], "at least 100ms"),
    ],
)
def test_ui_refuses_unsafe_or_malformed_settings_with_one_clear_line(
    db: sa.Engine, dsn: str, args: list[str], said: str
) -> None:
    code, output = run(dsn, *args)
    assert code == 2, output
    assert said in output
    assert "Traceback" not in output


def test_ui_refuses_a_database_without_the_schema(server: str) -> None:
    from outbox.testing import temporary_database

    with temporary_database(server, migrated=False) as bare:
        code, output = run(bare, "--addr", f"127.0.0.1:{free_port()}")
    assert code == 1, output
    assert "run `outbox migrate`" in output


def test_ui_says_which_extra_is_missing(
    db: sa.Engine, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if the ui extra were not installed
    code, output = run(dsn)
    assert code == 1
    assert "pip install 'outbox-relay[ui]'" in output


@contextlib.contextmanager
def serving(dsn: str, *args: str, env: dict[str, str] | None = None) -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [str(OUTBOX), "--dsn", dsn, "ui", "--addr", f"127.0.0.1:{port}", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, **(env or {})},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            assert process.poll() is None, process.communicate()[0]
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            assert time.monotonic() < deadline, "the console did not start within 20 s"
            time.sleep(0.05)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            output, _ = process.communicate(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - a hang is the failure
            process.kill()
            raise
        # uvicorn shuts down gracefully, then re-raises the signal it caught, as a process
        # stopped by SIGTERM should end
        assert process.returncode in (0, -signal.SIGTERM), output
        assert "Traceback" not in output


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_ui_serves_the_console_and_stops_cleanly_on_sigterm(db: sa.Engine, dsn: str) -> None:
    with Session(db) as session:
        [job] = outbox.enqueue_many(session, [outbox.NewJob("ui.job", {"n": 1}, key="acct-7")])
        session.commit()
    with serving(dsn, "--base-path", "/outbox") as url:
        status, page = get(f"{url}/outbox/jobs")
        assert status == 200
        assert str(job.uuid) in page
        assert 'href="/outbox/static/console.css"' in page
        assert "read-only" in page
        status, _ = get(f"{url}/outbox/static/htmx.min.js")
        assert status == 200


def test_ui_with_basic_auth_asks_everyone_to_sign_in(db: sa.Engine, dsn: str) -> None:
    with serving(dsn, env={"OUTBOX_UI_BASIC_AUTH": "alice:wonderland"}) as url:
        status, _ = get(f"{url}/")
        assert status == 401
        import base64

        signed = base64.b64encode(b"alice:wonderland").decode()
        status, page = get(f"{url}/", {"Authorization": f"Basic {signed}"})
        assert status == 200
        assert "alice" in page


# -- a console on a read-only database role ------------------------------------------------


#: A read-only console's role, as docs/howto/audit-roles.md gives it: in outbox_auditor, with
#: read-only transactions and its own statement timeout by default.
CONSOLE_ROLE = {"default_transaction_read_only": "on", "statement_timeout": "5s"}


def test_every_page_works_on_the_auditor_role(db: sa.Engine, dsn: str) -> None:
    with Session(db) as session:
        jobs = outbox.enqueue_many(
            session, [outbox.NewJob("ui.job", {"n": n}, key="acct-9") for n in range(3)]
        )
        session.commit()
    with db.connect() as conn:
        seal.seal_all(conn)
    with login_role(db, dsn, "outbox_auditor", CONSOLE_ROLE) as engine:
        client = TestClient(create_app(engine, ConsoleConfig()))
        for path in (
            "/", "/overview", "/jobs", "/jobs?state=pending", f"/jobs/{jobs[0].uuid}",
            f"/jobs/{jobs[0].uuid}/payload", "/keys/acct-9", "/relays", "/audit",
            "/audit?key=acct-9", "/audit/trail.csv?key=acct-9",
        ):  # fmt: skip
            answer = client.get(path)
            assert answer.status_code == 200, (path, answer.text[-600:])
        verified = client.get("/audit/verify")
        assert "Chain verified" in verified.text, verified.text[-600:]


def test_an_acting_console_on_the_auditor_role_is_refused_by_the_database(
    db: sa.Engine, dsn: str
) -> None:
    with Session(db) as session:
        [job] = outbox.enqueue_many(session, [outbox.NewJob("ui.job", {})])
        session.commit()
    with login_role(db, dsn, "outbox_auditor", CONSOLE_ROLE) as engine:
        app = create_app(engine, ConsoleConfig(allow_actions=True))
        client = TestClient(app)
        page = client.get(f"/jobs/{job.uuid}").text
        token = page.split('name="csrf_token" value="')[1].split('"')[0]
        answer = client.post(f"/jobs/{job.uuid}/cancel", data={"csrf_token": token})
        assert answer.status_code == 503
        assert "may not" in answer.text
    with db.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM outbox_jobs")).scalar_one() == 1
