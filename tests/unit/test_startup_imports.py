"""A relay's start imports what it runs and nothing else (DESIGN section 6: first claim
within 0.3 s of starting, most of which is importing).

Each check runs a fresh interpreter: what one test imported would hide another's import.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

#: What ``outbox relay`` imports before its first claim, with a plain no-op application.
RELAY_START = "import outbox, outbox.cli, outbox_relay.cli, outbox_relay.worker, bench.noop"
#: Modules a relay does not need unless the application uses them: the ORM (about 55 ms),
#: SQLAlchemy's asyncio extension (about 30 ms), Alembic (only `outbox migrate` runs one),
#: the commands other than the relay's (the audit, the console, the demo), and rich with
#: pygments and attrs, which structlog loads for pretty tracebacks the relay never prints
#: (about 55 ms and 3.7 MiB).
NOT_AT_START = (
    "rich",
    "pygments",
    "attr",
    "sqlalchemy.orm",
    "sqlalchemy.ext.asyncio",
    "alembic",
    "outbox.cli.audit",
    "outbox.cli.demo",
    "outbox.cli.jobs",
    "outbox.cli.ui",
    "outbox.console",
)


def imported_after(code: str) -> set[str]:
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    return set(json.loads(done.stdout))


def test_a_relay_start_imports_none_of_what_it_does_not_run() -> None:
    loaded = imported_after(RELAY_START)
    assert "outbox_relay.worker" in loaded  # the probe ran
    assert sorted(set(NOT_AT_START) & loaded) == []


def test_rich_is_kept_from_structlog_only_and_loads_when_asked() -> None:
    """The relay keeps rich out of structlog's import, not out of the process: the console
    commands and an application's code import it as usual."""
    probe = (
        "import outbox_relay.log, structlog.dev, sys\n"
        "assert 'rich' not in sys.modules and structlog.dev.rich is None\n"
        "import rich.console\n"
        "print(rich.console.Console.__name__)"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "Console"


def test_a_process_that_loaded_rich_first_keeps_structlogs_use_of_it() -> None:
    """Where rich is already loaded (an application that uses it), structlog finds it as it
    would without outbox."""
    probe = "import rich, outbox_relay.log, structlog.dev\nprint(structlog.dev.rich is rich)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"


@pytest.mark.parametrize("command", ["audit", "demo", "jobs", "migrate", "prune", "status", "ui"])
def test_each_command_still_loads_when_asked(command: str) -> None:
    """The command group imports a subcommand when it runs: each one's help still works."""
    done = subprocess.run(
        [sys.executable, "-m", "outbox", command, "--help"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"Usage: outbox {command}")


def test_an_unknown_command_is_refused_by_name() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "outbox", "relya"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "No such command 'relya'" in done.stderr
