"""outbox beside procrastinate and pgqueuer: the same workloads, one table.

    python -m bench [--quick] [--peers | --no-peers] [--install-peers] [--timeout 900]

Runs each workload for outbox (``python -m bench.ours``, project venv) and, when the
peers' venv exists (``python -m bench.peers.install``, or ``--install-peers``), for each
peer (``bench/peers/<peer>_driver.py``, peers' venv), one after the other, each in a
fresh database on the same server (OUTBOX_DSN, else 127.0.0.1:5432, else the embedded
server), each with a timeout. Prints the table, and writes it as Markdown to
``bench/last-run.md``. A run that fails shows "failed"; why goes to stderr.

Workloads (full / --quick): enqueue one job per commit from 4 clients (20,000 / 5,000
jobs); enqueue_bulk in one transaction (20,000 / 5,000); drain no-op jobs with 1 and with
2 processes (100,000 / 10,000; procrastinate at most 30,000), peak RSS of the workers
during it; latency from commit to handler start at 200 jobs/s for 20 s / 10 s.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

from outbox.database import libpq_dsn
from outbox.testing import server_dsn, temporary_database

ROOT = Path(__file__).resolve().parents[1]
SYSTEMS = ("outbox", "procrastinate", "pgqueuer")
PEERS = SYSTEMS[1:]
REPORT = ROOT / "bench" / "last-run.md"

#: What each system runs for a drain (and the latency run) beyond --processes.
RELAY_OPTIONS = {
    # the relay's defaults: 16 threads per process, claims at the handlers' pace, sealing on
    "outbox": [],
    "procrastinate": ["--concurrency", "10"],
    "pgqueuer": ["--batch-size", "50"],
}


@dataclasses.dataclass(frozen=True)
class Row:
    label: str
    run: str
    metric: str
    higher_is_better: bool


@dataclasses.dataclass
class Outcome:
    command: list[str]
    result: dict[str, Any] | None = None
    error: str | None = None
    seconds: float = 0.0


def plan(quick: bool) -> tuple[dict[str, list[str]], list[Row], dict[str, int]]:
    sizes = {
        "enqueue": 5_000 if quick else 20_000,
        # long enough that start-up (imports, connections) is a small part of the time
        "drain": 10_000 if quick else 100_000,
        "rate": 200,
        "seconds": 10 if quick else 20,
    }
    e, d, rate, secs = sizes["enqueue"], sizes["drain"], sizes["rate"], sizes["seconds"]
    runs = {
        "enqueue_single": ["--workload", "enqueue_single", "--jobs", str(e), "--clients", "4"],
        "enqueue_bulk": ["--workload", "enqueue_bulk", "--jobs", str(e)],
        "drain_1": ["--workload", "drain", "--jobs", str(d), "--processes", "1"],
        "drain_2": ["--workload", "drain", "--jobs", str(d), "--processes", "2"],
        "latency": ["--workload", "latency", "--jobs", str(rate * secs), "--rate", str(rate),
                    "--seconds", str(secs), "--processes", "1"],
    }  # fmt: skip
    rows = [
        Row(f"enqueue + commit, 4 clients, {e:,} (jobs/s)", "enqueue_single", "jobs_per_s", True),
        Row(f"enqueue_bulk, {e:,} jobs in 1 txn (jobs/s)", "enqueue_bulk", "jobs_per_s", True),
        Row(f"drain {d:,}, 1 process (jobs/s)", "drain_1", "jobs_per_s", True),
        Row(f"drain {d:,}, 2 processes (jobs/s)", "drain_2", "jobs_per_s", True),
        Row(f"latency p50 at {rate}/s for {secs}s (ms)", "latency", "p50_ms", False),
        Row(f"latency p95 at {rate}/s for {secs}s (ms)", "latency", "p95_ms", False),
        Row(f"latency p99 at {rate}/s for {secs}s (ms)", "latency", "p99_ms", False),
        Row("peak RSS in drain, 1 process (MiB)", "drain_1", "peak_rss_mib", False),
        Row("peak RSS in drain, 2 processes (MiB)", "drain_2", "peak_rss_mib", False),
    ]  # fmt: skip
    return runs, rows, sizes


#: A system this much slower drains fewer jobs: its rate does not depend on how many.
DRAIN_CAP = {"procrastinate": 30_000}


def driver_args(system: str, run: str, base: list[str]) -> list[str]:
    if run.startswith("drain") and system in DRAIN_CAP:
        at = base.index("--jobs") + 1
        base = [*base[:at], str(min(int(base[at]), DRAIN_CAP[system])), *base[at + 1 :]]
    if run.startswith("drain") or run == "latency":
        return [*base, *RELAY_OPTIONS[system]]
    return base


def execute(command: list[str], timeout: float) -> Outcome:
    """Run one driver in a process group of its own; its last stdout line is the result."""
    outcome = Outcome(command)
    started = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stdout, stderr = stop_group(process)
        outcome.error = f"timed out after {timeout:.0f}s"
    outcome.seconds = time.perf_counter() - started
    lines = [line for line in stdout.splitlines() if line.strip()]
    if outcome.error is None and process.returncode != 0:
        outcome.error = f"exit code {process.returncode}"
    if outcome.error is None:
        try:
            outcome.result = json.loads(lines[-1])
            if not isinstance(outcome.result, dict):
                raise ValueError("not a JSON object")
        except (IndexError, ValueError) as exc:
            outcome.error = f"no JSON result line on stdout ({exc})"
            outcome.result = None
    if outcome.error:
        tail = "\n".join((stderr or "").strip().splitlines()[-15:])
        outcome.error += f"\n{tail}" if tail else ""
    return outcome


def stop_group(process: subprocess.Popen[str]) -> tuple[str, str]:
    """SIGTERM the run's process group (it stops its workers), then SIGKILL it."""
    for sig, grace in ((signal.SIGTERM, 90), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            return process.communicate(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
    return "", ""


def run_ours(args: list[str], timeout: float) -> Outcome:
    venv = ROOT / ".venv" / "bin" / "python"
    python = str(venv) if venv.exists() else sys.executable
    return execute([python, "-m", "bench.ours", *args, "--timeout", f"{timeout - 30:g}"], timeout)


def run_peer(peer: str, python: Path, args: list[str], timeout: float, server: str) -> Outcome:
    driver = ROOT / "bench" / "peers" / f"{peer}_driver.py"
    if not driver.exists():
        return Outcome([str(python), str(driver.relative_to(ROOT)), *args], error="no driver")
    with temporary_database(server, prefix=f"bench_{peer}", migrated=False) as dsn:
        command = [str(python), str(driver.relative_to(ROOT)), "--dsn", libpq_dsn(dsn), *args]
        outcome = execute(command, timeout)
    outcome.command = [*command[:3], "DSN", *command[4:]]
    return outcome


def peers_python(args: argparse.Namespace) -> Path | None:
    """The peers' venv python, installing it when asked; None when peers are left out."""
    if args.peers is False:
        return None
    try:
        from bench.peers import install
    except ImportError as exc:
        print(f"peers left out: bench.peers.install cannot be imported ({exc})", file=sys.stderr)
        return None
    if args.install_peers:
        print("installing the peers' venv (python -m bench.peers.install)...", file=sys.stderr)
        try:
            subprocess.run(
                [sys.executable, "-m", "bench.peers.install"], cwd=ROOT, check=True, timeout=900
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            print(f"peers left out: installing them failed ({exc})", file=sys.stderr)
            return None
    python = install.python_path()
    if python.exists():
        return python
    reason = "no peers' venv: run python -m bench.peers.install or pass --install-peers"
    if args.peers:
        raise SystemExit(reason)
    print(f"peers left out: {reason}", file=sys.stderr)
    return None


def machine(server: str) -> list[str]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    with psycopg.connect(libpq_dsn(server), connect_timeout=10) as conn:
        row = conn.execute("SELECT version()").fetchone()
    pg = row[0] if row else "unknown"
    return [f"CPUs: {os.cpu_count()} x {model}", f"PostgreSQL: {pg}"]


def fmt(value: float | None, metric: str) -> str:
    if value is None:
        return "n/a"
    if metric == "jobs_per_s":
        return f"{value:,.0f}"
    return f"{value:,.1f}"


def table(
    rows: list[Row], outcomes: dict[tuple[str, str], Outcome], systems: list[str]
) -> list[list[str]]:
    header = ["workload", *systems, "outbox/best peer"]
    body = [header]
    for row in rows:
        cells = [row.label]
        values: dict[str, float] = {}
        for system in systems:
            outcome = outcomes.get((system, row.run))
            if outcome is None:
                cells.append("-")
            elif outcome.result is None:
                cells.append("failed")
            else:
                value = outcome.result.get(row.metric)
                if isinstance(value, int | float):
                    values[system] = float(value)
                cells.append(fmt(value, row.metric) if isinstance(value, int | float) else "n/a")
        peer_values = [v for s, v in values.items() if s != "outbox" and v > 0]
        if "outbox" in values and peer_values:
            best = max(peer_values) if row.higher_is_better else min(peer_values)
            cells.append(f"{values['outbox'] / best:.2f}")
        else:
            cells.append("-")
        body.append(cells)
    return body


def render_text(body: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in body) for i in range(len(body[0]))]
    lines = []
    for n, cells in enumerate(body):
        parts = [cells[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(parts))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


def render_markdown(body: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(body[0]) + " |"]
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(body[0]) - 1)) + "|")
    lines += ["| " + " | ".join(cells) + " |" for cells in body[1:]]
    return lines


def describe(config: object) -> str:
    if isinstance(config, dict):
        return " ".join(f"{k}={v}" for k, v in config.items())
    return str(config)


def notes(outcomes: dict[tuple[str, str], Outcome]) -> list[str]:
    lines = []
    versions = {
        s: o.result.get("version", "?") for (s, _), o in outcomes.items() if o.result is not None
    }
    lines.append("Versions: " + ", ".join(f"{s} {v}" for s, v in versions.items()))
    lines.append("")
    lines.append("Runs (system, workload, config, wall time of the run, command):")
    for (system, run), outcome in outcomes.items():
        if outcome.result is not None:
            config = describe(outcome.result.get("config", ""))
            status = f"{outcome.result.get('seconds', 0):.2f}s measured"
        else:
            config, status = "", "FAILED: " + (outcome.error or "").splitlines()[0]
        command = shlex.join(
            [Path(outcome.command[0]).relative_to(ROOT).as_posix()
             if outcome.command[0].startswith(str(ROOT)) else outcome.command[0],
             *outcome.command[1:]]
        )  # fmt: skip
        lines.append(
            f"- {system} {run}: {config} ({status}, {outcome.seconds:.0f}s in all): `{command}`"
        )
    return lines


LEGEND = [
    "jobs/s: higher is better; ms and MiB: lower is better. The ratio is outbox over the best "
    "peer in that row: above 1 means outbox is ahead for jobs/s, below 1 means outbox is ahead "
    "for ms and MiB.",
    "drain: jobs enqueued first (not timed; procrastinate drains at most 30,000), timed from "
    "starting the workers until the queue is empty (outbox: and every history row sealed). "
    "Latency: from the producer's commit to the handler's start. Peak RSS: workers and their "
    "children, sampled every 0.1 s.",
    "Configs: outbox at its defaults (16 threads per process, claims at the handlers' pace "
    "up to 500, sealing on); procrastinate --concurrency 10 per process; pgqueuer "
    "--batch-size 50 per process. Latency runs use 1 process of each.",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs (a few minutes)")
    parser.add_argument(
        "--peers",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run the peers (default: when their venv exists)",
    )
    parser.add_argument("--install-peers", action="store_true", help="build the peers' venv first")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per run")
    parser.add_argument("--output", type=Path, default=REPORT, help="the Markdown report")
    args = parser.parse_args(argv)
    if args.install_peers and args.peers is None:
        args.peers = True
    command = "python -m bench " + shlex.join(sys.argv[1:] if argv is None else argv)
    server = server_dsn()
    header = [f"$ {command}", *machine(server)]
    header.append("Shared machine: the figures are indicative.")
    print("\n".join(header), flush=True)

    peer_python = peers_python(args)
    systems = ["outbox", *PEERS] if peer_python else ["outbox"]
    runs, rows, _ = plan(args.quick)
    outcomes: dict[tuple[str, str], Outcome] = {}
    for system in systems:
        for run, base in runs.items():
            extra = driver_args(system, run, base)
            print(f"  {system} {run} ...", end="", file=sys.stderr, flush=True)
            if system == "outbox":
                outcome = run_ours(extra, args.timeout)
            else:
                assert peer_python is not None
                outcome = run_peer(system, peer_python, extra, args.timeout, server)
            outcomes[system, run] = outcome
            if outcome.error:
                print(f" failed ({outcome.seconds:.0f}s)", file=sys.stderr)
                print(f"{system} {run} failed: {outcome.error}", file=sys.stderr, flush=True)
            else:
                print(f" done ({outcome.seconds:.0f}s)", file=sys.stderr, flush=True)

    body = table(rows, outcomes, [*SYSTEMS] if peer_python else ["outbox"])
    print()
    print("\n".join(render_text(body)))
    print()
    print("\n".join([*LEGEND, "", *notes(outcomes)]))

    markdown = [
        "# Benchmark: outbox, procrastinate, pgqueuer",
        "",
        "```",
        *header,
        "```",
        "",
        *render_markdown(body),
        "",
        *LEGEND,
        "",
        *notes(outcomes),
        "",
    ]
    args.output.write_text("\n".join(markdown))
    print(f"\nwritten to {args.output}", file=sys.stderr)
    return 1 if any(o.error for o in outcomes.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
