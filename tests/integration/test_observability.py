"""Metrics, health and logs of a running relay, as operators and Prometheus see them."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import psycopg
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.orm import Session

import outbox
from outbox.database import libpq_dsn, sqlalchemy_url
from tests.integration.relay_harness import live_jobs, running_relay, scalar, wait_for

ROOT = Path(__file__).resolve().parents[2]


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def samples(text: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include ``labels``."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                total += sample.value
    return total


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def enqueue(db: sa.Engine, jobs: list[outbox.NewJob]) -> None:
    with Session(db) as session:
        outbox.enqueue_many(session, jobs)
        session.commit()


def test_metrics_count_outcomes_exactly_and_queue_gauges_read_the_database(
    db: sa.Engine, dsn: str
) -> None:
    registry = outbox.Registry()
    registry.register("obs.ok", lambda job: None)

    def bad(job: outbox.Job) -> None:
        raise RuntimeError("nope")

    registry.register("obs.bad", bad, max_attempts=1)
    jobs = [outbox.NewJob("obs.ok", {}) for _ in range(5)]
    jobs += [outbox.NewJob("obs.bad", {}) for _ in range(2)] + [outbox.NewJob("obs.unknown", {})]
    enqueue(db, jobs)
    with running_relay(registry, dsn, metrics_addr=("127.0.0.1", 0)) as worker:
        assert worker.http is not None
        base = "http://{}:{}".format(*worker.http.address)
        _, before = get(f"{base}/metrics")
        # obs.unknown has no handler here: it waits, unclaimed, for a relay that has one.
        wait_for(lambda: scalar(db, "SELECT count(*) FROM outbox_jobs WHERE state = 'dead'") == 2
                 and live_jobs(db) == 3, what="the workload")  # fmt: skip

        def scraped() -> str | None:
            """Counters move at once; the queue gauges are re-read every few seconds."""
            _, text = get(f"{base}/metrics")
            done = samples(text, "outbox_jobs_completed_total", type="obs.ok", outcome="succeeded")
            already = samples(
                before, "outbox_jobs_completed_total", type="obs.ok", outcome="succeeded"
            )
            fresh = samples(text, "outbox_dead_jobs", queue="default") == 2
            return text if done - already == 5 and fresh else None

        text = wait_for(scraped, what="the counters")
        assert get(f"{base}/healthz") == (200, "alive\n")
        assert get(f"{base}/readyz") == (200, "ready\n")
    delta = {
        outcome: samples(text, "outbox_jobs_completed_total", outcome=outcome)
        - samples(before, "outbox_jobs_completed_total", outcome=outcome)
        for outcome in ("succeeded", "retried", "dead")
    }
    assert delta == {"succeeded": 5, "retried": 0, "dead": 2}
    assert samples(text, "outbox_dead_jobs", queue="default") == 2
    assert samples(text, "outbox_queue_depth", queue="default", state="dead") == 2
    assert samples(text, "outbox_unrunnable_jobs", queue="default", type="obs.unknown") == 1
    assert samples(text, "outbox_handler_duration_seconds_count", type="obs.ok") >= 5
    assert "uuid=" not in text  # bounded labels only
    assert "key=" not in text


def test_readyz_turns_unready_without_the_database_and_ready_again(
    db: sa.Engine, dsn: str, server: str
) -> None:
    registry = outbox.Registry()
    registry.register("obs.ok", lambda job: None)
    name = sqlalchemy_url(dsn).database
    admin = libpq_dsn(server)
    with running_relay(registry, dsn, metrics_addr=("127.0.0.1", 0)) as worker:
        assert worker.http is not None
        base = "http://{}:{}".format(*worker.http.address)
        wait_for(lambda: get(f"{base}/readyz")[0] == 200, what="ready")
        try:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = %s AND pid <> pg_backend_pid()", (name,),
                )  # fmt: skip
            _, reason = wait_for(
                lambda: (r := get(f"{base}/readyz"))[0] == 503 and r, what="unready"
            )
            assert "database unreachable" in reason
            assert get(f"{base}/healthz")[0] == 200  # alive all along
        finally:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        wait_for(lambda: get(f"{base}/readyz")[0] == 200, what="ready again")


def test_one_endpoint_sums_the_metrics_of_several_processes(
    db: sa.Engine, dsn: str, tmp_path: Path
) -> None:
    enqueue(db, [outbox.NewJob("chaos.plain", {"n": n}) for n in range(300)])
    port = free_port()
    log = (tmp_path / "relay.log").open("wb")
    relay = subprocess.Popen(
        [sys.executable, "-m", "outbox", "--dsn", dsn, "relay", "--app", "tests.chaos.app:registry",
         "--processes", "2", "--metrics-addr", f"127.0.0.1:{port}", "--log-format", "json"],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        wait_for(lambda: live_jobs(db) == 0, timeout=60, what="300 jobs")
        base = f"http://127.0.0.1:{port}"

        def counted() -> bool:
            status, text = get(f"{base}/metrics")
            return (
                status == 200
                and samples(
                    text, "outbox_jobs_completed_total", type="chaos.plain", outcome="succeeded"
                )
                == 300
            )

        wait_for(counted, timeout=20, what="the summed counter")
        assert get(f"{base}/readyz")[0] == 200
    finally:
        relay.send_signal(signal.SIGTERM)
        code = relay.wait(30)
    assert code == 0, (tmp_path / "relay.log").read_text()


def test_logs_are_json_lines_bound_to_the_job_without_payload_values(
    db: sa.Engine, dsn: str, tmp_path: Path
) -> None:
    secret = "4111-1111-1111-1111"
    enqueue(db, [outbox.NewJob("chaos.crash_free_failure", {"card": secret}, key="acct:1")])
    log_path = tmp_path / "relay.log"
    with log_path.open("wb") as log:
        relay = subprocess.Popen(
            [sys.executable, "-m", "outbox", "--dsn", dsn, "relay",
             "--app", "tests.chaos.app:registry", "--metrics-addr", "off", "--log-format", "json",
             "--queues", "default"],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "OUTBOX_DEFAULT_MAX_ATTEMPTS": "1"},
        )  # fmt: skip
        try:
            wait_for(lambda: scalar(db, "SELECT state FROM outbox_jobs") == "dead", what="dead")
        finally:
            relay.send_signal(signal.SIGTERM)
            relay.wait(30)
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    [dead] = [line for line in lines if line["event"] == "job dead"]
    assert {"uuid", "type", "key", "queue", "attempt", "relay"} <= dead.keys()
    assert (dead["type"], dead["key"], dead["level"]) == (
        "chaos.crash_free_failure",
        "acct:1",
        "error",
    )
    assert secret not in log_path.read_text()


def test_metrics_address_in_use_is_a_clear_startup_error(dsn: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "outbox", "--dsn", dsn, "relay", "--app",
             "tests.chaos.app:registry", "--metrics-addr", f"127.0.0.1:{port}"],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert result.returncode == 1
    assert f"cannot serve metrics on 127.0.0.1:{port}" in result.stderr
    assert "--metrics-addr" in result.stderr
