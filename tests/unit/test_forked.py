"""Relay processes forked from their supervisor (relay/forked.py): their exit status reads as
subprocess.Popen's, a stop signal that comes before the relay's own handlers ends them, and
their metrics go to the supervisor's multiprocess files, even those made before the fork.

Each case forks from a fresh interpreter of its own (one thread), as the supervisor does."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SUPERVISOR = textwrap.dedent(
    """
    import json, os, sys, time

    from outbox_relay import forked, metrics

    case, directory = sys.argv[1], sys.argv[2]
    environ = {"PROMETHEUS_MULTIPROC_DIR": directory, "OUTBOX_TEST_MARK": "set"}
    metrics.JOBS_COMPLETED.labels("q", "t", "succeeded")  # a series made before the fork


    def returns():
        return 7 if os.environ["OUTBOX_TEST_MARK"] == "set" else 3


    def raises():
        raise RuntimeError("the relay failed to start")


    def exits():
        sys.exit()


    def counts():
        metrics.RESCUED.inc(2)
        metrics.JOBS_COMPLETED.labels("q", "t", "succeeded").inc(5)
        return 0


    def waits():
        open(os.path.join(directory, "started"), "w").close()
        time.sleep(30)
        return 0


    child = forked.fork(globals()[case], environ)
    deadline = time.monotonic() + 40
    while child.poll() is None and time.monotonic() < deadline:
        if case == "waits" and os.path.exists(os.path.join(directory, "started")):
            child.send_signal(15)
        time.sleep(0.01)
    child.kill()  # no effect on an ended process; a hung one must not outlive the test
    print(json.dumps({"code": child.poll(), "mark": os.environ.get("OUTBOX_TEST_MARK")}))
    """
)


def supervise(case: str, directory: Path) -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, "-c", SUPERVISOR, case, str(directory)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    answer: dict[str, object] = json.loads(result.stdout.splitlines()[-1])
    answer["stderr"] = result.stderr
    return answer


@pytest.mark.parametrize(
    ("case", "code"), [("returns", 7), ("raises", 1), ("exits", 0), ("waits", -signal.SIGTERM)]
)
def test_a_forked_process_exits_as_a_started_one_would(
    case: str, code: int, tmp_path: Path
) -> None:
    answer = supervise(case, tmp_path)
    assert answer["code"] == code
    assert answer["mark"] is None, "the child's environment is its own"
    if case == "raises":
        assert "RuntimeError: the relay failed to start" in str(answer["stderr"])


def test_a_forked_process_writes_its_metrics_where_the_supervisor_reads_them(
    tmp_path: Path,
) -> None:
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    assert supervise("counts", tmp_path)["code"] == 0
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(tmp_path))  # type: ignore[no-untyped-call]
    assert registry.get_sample_value("outbox_jobs_rescued_total") == 2
    labels = {"queue": "q", "type": "t", "outcome": "succeeded"}
    assert registry.get_sample_value("outbox_jobs_completed_total", labels) == 5
