"""outbox beside procrastinate, pgqueuer and a raw-SQL limit: the same workloads, fairly.

    python -m bench [--quick] [--rounds N] [--only WORKLOAD,...] [--systems SYSTEM,...]
                    [--preparation both|analyze|fresh] [--seed N] [--plan]
                    [--peers | --no-peers] [--install-peers] [--timeout 900] [--output PATH]
    python -m bench --sweep-pgqueuer [--quick] [--rounds N]

The rules are DESIGN.md section 6's. Every run gets a fresh database on the same server
(OUTBOX_DSN, else 127.0.0.1:5432, else the embedded server) and a timeout. The drain runs in
two preparations, both shown: "after ANALYZE" (the fill, then ANALYZE of the whole fresh
database, then the workers) and "fresh burst, no ANALYZE" (the fill, then the workers); the
fill is N no-op jobs in one transaction through each system's bulk enqueue. A drain is timed
from the moment before the workers are started until the queue is empty, polled every
0.02 s (outbox: and every history row sealed, which is stricter for outbox).

Configurations: outbox at the relay's own defaults with 1 and 2 processes; pgqueuer on
asyncpg with 1 and 2 processes, batch 50 and its best other batch size
(``PGQUEUER_OTHER_BATCH``, from ``--sweep-pgqueuer``); procrastinate with 2 processes of
``--concurrency 10``; the raw-SQL baseline (``bench/baseline.py``), one process.

Runs are interleaved: each round runs every (system, configuration, preparation) once, in
an order shuffled anew each round (``--seed`` repeats one), ``--rounds`` rounds (3; 1 with
``--quick``). Each cell is "median (min-max)" over the rounds. A peer figure more than 20%
below what DESIGN.md section 6 reports for it gets a FLAG note.

Workloads (full / --quick): enqueue one job per commit from 4 clients (20,000 / 5,000
jobs); enqueue_bulk in one transaction (20,000 / 5,000); drain no-op jobs (100,000 / 10,000;
procrastinate at most 30,000), peak RSS of the workers during it; latency from commit to
handler start at 200 jobs/s for 20 s / 10 s, 1 process each.

Prints the tables, and writes them as Markdown to ``bench/last-run.md`` with the command
line and the machine. ``--plan`` prints the runs and the estimated duration, and runs
nothing. A run that fails shows in its cell; why goes to stderr and the notes.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import random
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg

from bench import compile_sources
from bench.table import (
    BASELINE,
    DASH,
    OURS,
    PEERS,
    PREPARATIONS,
    Case,
    Result,
    Row,
    drain_table,
    number,
    other_table,
    reference_notes,
    render_markdown,
    render_text,
    values,
)
from outbox.database import libpq_dsn
from outbox.testing import server_dsn, temporary_database

ROOT = Path(__file__).resolve().parents[1]
SYSTEMS = (BASELINE, OURS, *PEERS)
WORKLOADS = ("enqueue_single", "enqueue_bulk", "drain", "latency")
REPORT = ROOT / "bench" / "last-run.md"

#: procrastinate takes one job per fetch: it drains this many at most (its rate over 30,000
#: is its rate; 100,000 would take minutes per run).
DRAIN_CAP = {"procrastinate": 30_000}
PROCRASTINATE_CONCURRENCY = 10  # the driver's default: jobs at once per worker
PGQUEUER_BATCH = 50
#: pgqueuer's best batch size other than 50, from ``python -m bench --sweep-pgqueuer``
#: (2 processes, 100,000 jobs, one run each); SWEEP records what that run measured.
PGQUEUER_OTHER_BATCH = 200
SWEEP = (
    "2026-11-30, 2 processes, 100,000 jobs, one run each, after ANALYZE / fresh burst, "
    "jobs/s: batch 10: 8,966 / 1,730; batch 50: 24,004 / 7,021; batch 100: 24,837 / "
    "10,479; batch 200: 28,419 / 18,553 (200, the largest size tried, was best in both)"
)
SWEEP_BATCHES = (10, 50, 100, 200)
BASELINE_BATCH = 100
#: Seconds between an empty queue and the last seal that call for a note (it seals every 1 s).
SEAL_WAIT_NOTE = 2.5

#: For the estimate printed at the start, measured on a 2-core machine: (system, workload)
#: -> (jobs/s, seconds outside the timed part, share of the rate left in a fresh burst).
EXPECTED: dict[tuple[str, str], tuple[int, float, float]] = {
    (BASELINE, "drain"): (40_000, 0.5, 1.0),
    (OURS, "drain"): (24_000, 1.0, 1.0),
    ("pgqueuer", "drain"): (15_000, 1.0, 0.4),  # 1 process; 2 processes: about 1.45 times
    ("procrastinate", "drain"): (950, 1.0, 0.8),
    (OURS, "enqueue_single"): (1_700, 2.0, 1.0),
    ("pgqueuer", "enqueue_single"): (3_200, 1.0, 1.0),
    ("procrastinate", "enqueue_single"): (2_200, 1.0, 1.0),
    (OURS, "enqueue_bulk"): (60_000, 1.5, 1.0),
    ("pgqueuer", "enqueue_bulk"): (30_000, 1.0, 1.0),
    ("procrastinate", "enqueue_bulk"): (15_000, 1.0, 1.0),
}


@dataclasses.dataclass(frozen=True)
class Sizes:
    enqueue: int
    drain: int
    rate: int
    seconds: int

    @classmethod
    def of(cls, quick: bool) -> Sizes:
        # drains long enough that start-up (imports, connections) is a small part of them
        return cls(5_000 if quick else 20_000, 10_000 if quick else 100_000, 200,
                   10 if quick else 20)  # fmt: skip


@dataclasses.dataclass
class Outcome:
    case: Case
    round: int
    command: list[str]
    result: dict[str, Any] | None = None
    error: str | None = None
    seconds: float = 0.0


# --- what runs --------------------------------------------------------------------


def drain_configs(system: str, sweep: bool) -> list[Case]:
    """The drain's configurations of a system, without their preparation."""
    if sweep:
        return [Case("drain", system, 2, b) for b in SWEEP_BATCHES] if system == "pgqueuer" else []
    if system == BASELINE:
        return [Case("drain", BASELINE, 1, BASELINE_BATCH)]
    if system == OURS:
        return [Case("drain", OURS, p) for p in (1, 2)]
    if system == "pgqueuer":
        batches = sorted({PGQUEUER_BATCH, PGQUEUER_OTHER_BATCH})
        return [Case("drain", system, p, b) for b in batches for p in (1, 2)]
    return [Case("drain", system, 2)]


def plan_cases(
    systems: Sequence[str], workloads: Sequence[str], preparations: Sequence[bool], sweep: bool
) -> list[Case]:
    cases = []
    for workload in workloads:
        for system in systems:
            if workload == "drain":
                cases += [
                    dataclasses.replace(config, analyze=a)
                    for config in drain_configs(system, sweep)
                    for a in preparations
                ]
            elif system != BASELINE and not sweep:
                cases.append(Case(workload, system))
    return cases


def driver_args(case: Case, sizes: Sizes) -> list[str]:
    """The driver's options for a case (the same options for every driver)."""
    if case.workload == "drain":
        jobs = min(sizes.drain, DRAIN_CAP.get(case.system, sizes.drain))
        args = ["--workload", "drain", "--jobs", str(jobs)]
        if case.system == BASELINE:
            args += ["--batch", str(case.batch)]
        else:
            args += ["--processes", str(case.processes)]
        if case.system == "pgqueuer":
            args += ["--batch-size", str(case.batch)]
        if case.system == "procrastinate":
            args += ["--concurrency", str(PROCRASTINATE_CONCURRENCY)]
        return [*args, "--analyze"] if case.analyze else args
    if case.workload == "latency":
        jobs = sizes.rate * sizes.seconds
        args = ["--workload", "latency", "--jobs", str(jobs), "--rate", str(sizes.rate),
                "--seconds", str(sizes.seconds), "--processes", "1"]  # fmt: skip
        if case.system == "pgqueuer":
            args += ["--batch-size", str(PGQUEUER_BATCH)]
        if case.system == "procrastinate":
            args += ["--concurrency", str(PROCRASTINATE_CONCURRENCY)]
        return args
    args = ["--workload", case.workload, "--jobs", str(sizes.enqueue)]
    return [*args, "--clients", "4"] if case.workload == "enqueue_single" else args


def expected_seconds(case: Case, sizes: Sizes) -> float:
    if case.workload == "latency":
        return sizes.seconds + 3
    expected, setup, fresh = EXPECTED.get((case.system, case.workload), (5_000, 5, 1.0))
    rate = float(expected)
    if case.workload != "drain":
        return setup + sizes.enqueue / rate
    jobs = min(sizes.drain, DRAIN_CAP.get(case.system, sizes.drain))
    if case.analyze is False:
        rate *= fresh
    if case.system == "pgqueuer" and case.processes == 2:
        rate *= 1.45
    return setup + jobs / rate + jobs / 50_000  # the fill


# --- running ----------------------------------------------------------------------


def execute(outcome: Outcome, timeout: float) -> Outcome:
    """Run one driver in a process group of its own; its last stdout line is the result."""
    started = time.perf_counter()
    process = subprocess.Popen(
        outcome.command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stdout, stderr = stop_group(process)
        outcome.error = f"timed out after {timeout:.0f}s"
    except KeyboardInterrupt:  # the run is in a session of its own: Ctrl-C does not reach it
        stop_group(process)
        raise
    outcome.seconds = time.perf_counter() - started
    lines = [line for line in stdout.splitlines() if line.strip()]
    if outcome.error is None and process.returncode != 0:
        outcome.error = f"exit code {process.returncode}"
    if outcome.error is None:
        try:
            result = json.loads(lines[-1])
            if not isinstance(result, dict):
                raise ValueError("not a JSON object")
            outcome.result = result
        except (IndexError, ValueError) as exc:
            outcome.error = f"no JSON result line on stdout ({exc})"
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


def project_python() -> str:
    venv = ROOT / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def run_case(
    case: Case, round_: int, sizes: Sizes, timeout: float, server: str, peers: Path | None
) -> Outcome:
    args = [*driver_args(case, sizes), "--timeout", f"{timeout - 30:g}"]
    if case.system in (OURS, BASELINE):
        module = "bench.ours" if case.system == OURS else "bench.baseline"
        return execute(Outcome(case, round_, [project_python(), "-m", module, *args]), timeout)
    assert peers is not None
    driver = ROOT / "bench" / "peers" / f"{case.system}_driver.py"
    with temporary_database(server, prefix=f"bench_{case.system}", migrated=False) as dsn:
        outcome = Outcome(case, round_, [str(peers), str(driver.relative_to(ROOT)),
                                         "--dsn", libpq_dsn(dsn), *args])  # fmt: skip
        execute(outcome, timeout)
    outcome.command[3] = "DSN"  # the database is gone, and a DSN may hold a password
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
    model, memory = "unknown", "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 2**20:.1f} GiB"
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    with psycopg.connect(libpq_dsn(server), connect_timeout=10) as conn:
        settings = {
            name: str(row[0]) if (row := conn.execute(f"SHOW {name}").fetchone()) else "?"
            for name in ("autovacuum", "synchronous_commit", "shared_buffers", "max_wal_size")
        }
        row = conn.execute("SELECT version()").fetchone()
    version = row[0] if row else "unknown"
    return [
        f"Machine: {os.cpu_count()} x {model}, {memory} memory, load average {load} at the "
        f"start; Python {platform.python_version()}",
        f"PostgreSQL: {version}",
        "PostgreSQL settings: " + ", ".join(f"{k} {v}" for k, v in settings.items()),
    ]


# --- the report -------------------------------------------------------------------

OTHER_ROWS = [
    ("enqueue + commit, 4 clients, {e:,} (jobs/s)", "enqueue_single", "jobs_per_s", True),
    ("enqueue_bulk, {e:,} jobs in 1 txn (jobs/s)", "enqueue_bulk", "jobs_per_s", True),
    ("latency p50 at {r}/s for {s}s (ms)", "latency", "p50_ms", False),
    ("latency p95 at {r}/s for {s}s (ms)", "latency", "p95_ms", False),
    ("latency p99 at {r}/s for {s}s (ms)", "latency", "p99_ms", False),
    ("peak RSS in latency, 1 process (MiB)", "latency", "peak_rss_mib", False),
]


def legend(sizes: Sizes, rounds: int) -> list[str]:
    other = "" if PGQUEUER_OTHER_BATCH == PGQUEUER_BATCH else f" and {PGQUEUER_OTHER_BATCH}"
    return [
        f"Cells: median (min{DASH}max) over {rounds} round(s); each round ran every case once, in "
        "a shuffled order. Ratios and percents are between medians. jobs/s: higher is better; "
        "ms and MiB: lower is better.",
        "Preparation (DESIGN.md section 6, the same for every system): a fresh database per "
        f"run; the drain's fill is {sizes.drain:,} no-op jobs (procrastinate: "
        f"{DRAIN_CAP['procrastinate']:,} at most) in one transaction through each system's "
        "bulk enqueue; 'after ANALYZE' then runs ANALYZE on the whole database (only the "
        "system's own tables are in it), 'fresh burst, no ANALYZE' runs nothing. Neither is "
        "timed.",
        "drain: timed from the moment before the workers are started until the queue is "
        "empty, polled every 0.02 s with one autocommit statement. For outbox, also until "
        "every history row (the fill's 'enqueued' rows too) is sealed into the digest chain, "
        "which no peer does: the timing is stricter for outbox (the notes give its rate until "
        "the queue was empty).",
        "Configs: outbox at the relay's own defaults (16 threads per process, claims at the "
        "handlers' pace up to 500, sealing every 1 s; no OUTBOX_* setting but the DSN); "
        f"pgqueuer on asyncpg, default durable tables, batch {PGQUEUER_BATCH}{other} per "
        f"process; procrastinate --concurrency {PROCRASTINATE_CONCURRENCY} per process, one "
        "job per fetch, default settings; raw SQL baseline: one process, claims of "
        f"{BASELINE_BATCH} (FOR UPDATE SKIP LOCKED) then delete and history insert per batch, "
        "as relay/sql/claim.sql and complete.sql do, no Python per job, no sealing "
        "(bench/baseline.py). 'percent of the limit' is outbox's drain over the baseline's.",
        "Latency: from the producer's commit to the handler's start, 1 process each. Peak "
        "RSS: workers and their children, sampled every 0.1 s (the drain's: over both "
        "preparations).",
    ]


def notes(outcomes: Sequence[Outcome], results: dict[Case, list[Result]], quick: bool) -> list[str]:
    lines = reference_notes(results)
    if lines and quick:
        lines.insert(0, "These are --quick's sizes; DESIGN.md's figures are for full sizes, "
                        "so the FLAGs below say little.")  # fmt: skip
    for outcome in outcomes:
        if outcome.error:
            lines.append(f"FAILED: {outcome.case.name}, round {outcome.round}: "
                         f"{outcome.error.splitlines()[0]}")  # fmt: skip
    for case, runs in results.items():
        analysed = [r for r in runs if r is not None and r.get("analyses_during")]
        if analysed:
            why = ""
            if case.system == OURS:
                why = (" (the relay's upkeep: VACUUM (ANALYZE) outbox_jobs once dead rows pile "
                       "up, relay/upkeep.py; part of its timed work)")  # fmt: skip
            lines.append(
                f"{case.name}: tables were analysed during the timed drain in "
                f"{len(analysed)} of {len(runs)} run(s){why}"
            )
        empty = values(runs, "empty_jobs_per_s")
        if empty:
            lines.append(
                f"{case.name}: until the queue was empty, before the wait for the last seal: "
                + ", ".join(number(v, "jobs_per_s") for v in empty)
                + " jobs/s (sealing runs every 1 s, and 0.1 s after a backlog runs dry)"
            )
        waits = values(runs, "seal_wait_s")
        if waits and max(waits) > SEAL_WAIT_NOTE:
            lines.append(
                f"FLAG: {case.name}: the last seal came {max(waits):.1f}s after the queue was "
                "empty. A seal covers only transactions below the server's xmin horizon, so a "
                "transaction open elsewhere on the server (another database too) holds it "
                "back: look for one before trusting this figure."
            )
        own = values(runs, "sustained_jobs_per_s")
        if own:
            lines.append(
                f"{case.name}: the worker's own rate, first claim to last commit: "
                + ", ".join(number(v, "jobs_per_s") for v in own)
                + " jobs/s (without starting a process and connecting)"
            )
    lines.append(f"pgqueuer's other batch size, {PGQUEUER_OTHER_BATCH}: the best of a sweep "
                 f"(python -m bench --sweep-pgqueuer), {SWEEP}")  # fmt: skip
    versions: dict[str, str] = {}
    for outcome in outcomes:
        if outcome.result is not None:
            versions.setdefault(outcome.case.system, str(outcome.result.get("version", "?")))
    lines.append("Versions: " + ", ".join(f"{s} {v}" for s, v in sorted(versions.items())))
    return lines


def runs_list(outcomes: Sequence[Outcome]) -> list[str]:
    """One line per case: its figure in each round, its configuration and its command."""
    lines = ["Runs (case: jobs/s or p50 ms per round, in round order; config; command):"]
    by_case: dict[Case, list[Outcome]] = {}
    for outcome in outcomes:
        by_case.setdefault(outcome.case, []).append(outcome)
    for case in sorted(by_case):
        runs = by_case[case]
        metric = "p50_ms" if case.workload == "latency" else "jobs_per_s"
        figures = ", ".join(
            "failed" if o.result is None else number(float(o.result.get(metric, 0)), metric)
            for o in runs
        )
        config = next((describe(o.result.get("config")) for o in runs if o.result), "")
        command = runs[0].command
        shown = [Path(command[0]).relative_to(ROOT).as_posix()
                 if command[0].startswith(str(ROOT)) else command[0], *command[1:]]  # fmt: skip
        spent = sum(o.seconds for o in runs)
        lines.append(f"- {case.name}: {figures} ({config}; {spent:.0f}s in all): "
                     f"`{shlex.join(shown)}`")  # fmt: skip
    return lines


def describe(config: object) -> str:
    if isinstance(config, dict):
        return " ".join(f"{k}={v}" for k, v in config.items())
    return str(config)


def report(
    results: dict[Case, list[Result]],
    outcomes: Sequence[Outcome],
    sizes: Sizes,
    rounds: int,
    quick: bool,
) -> tuple[list[list[list[str]]], list[str]]:
    """The tables (drain, then the others) and the lines under them."""
    tables: list[list[list[str]]] = []
    below: list[str] = []
    if any(case.workload == "drain" for case in results):
        body, best = drain_table(results, sizes.drain)
        tables.append(body)
        below += best
    systems = [s for s in (OURS, *PEERS) if any(c.system == s for c in results)]
    rows = [
        Row(label.format(e=sizes.enqueue, r=sizes.rate, s=sizes.seconds), w, m, h)
        for label, w, m, h in OTHER_ROWS
        if any(case.workload == w for case in results)
    ]
    if rows:
        tables.append(other_table(rows, results, systems))
    return tables, [*below, "", *legend(sizes, rounds), "", "Notes:",
                    *(f"- {n}" for n in notes(outcomes, results, quick))]  # fmt: skip


# --- the command ------------------------------------------------------------------


def names(text: str, allowed: Sequence[str], what: str) -> list[str]:
    chosen = [n.strip() for n in text.split(",") if n.strip()]
    wrong = [n for n in chosen if n not in allowed]
    if wrong or not chosen:
        raise argparse.ArgumentTypeError(
            f"{what}: {', '.join(wrong) or 'none given'}; choose from {', '.join(allowed)}"
        )
    return chosen


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small runs, 1 round (smoke test)")
    parser.add_argument("--rounds", type=int, help="rounds of every case (default 3; --quick 1)")
    parser.add_argument(
        "--only",
        type=lambda t: names(t, WORKLOADS, "unknown workload"),
        default=list(WORKLOADS),
        metavar="WORKLOAD,...",
        help=f"run these workloads only ({', '.join(WORKLOADS)})",
    )
    parser.add_argument(
        "--systems",
        type=lambda t: names(t, SYSTEMS, "unknown system"),
        default=list(SYSTEMS),
        metavar="SYSTEM,...",
        help=f"run these systems only ({', '.join(SYSTEMS)})",
    )
    parser.add_argument(
        "--preparation",
        choices=["both", "analyze", "fresh"],
        default="both",
        help="the drain's preparations (default both)",
    )
    parser.add_argument("--seed", type=int, help="the order's random seed (default: a new one)")
    parser.add_argument("--plan", action="store_true", help="print the runs and the estimate")
    parser.add_argument(
        "--sweep-pgqueuer",
        action="store_true",
        help=f"drain pgqueuer with 2 processes at batch sizes {SWEEP_BATCHES} instead; "
        "writes no report unless --output is given",
    )
    parser.add_argument(
        "--peers",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run the peers (default: when their venv exists)",
    )
    parser.add_argument("--install-peers", action="store_true", help="build the peers' venv first")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per run")
    parser.add_argument("--output", type=Path, help=f"the Markdown report (default {REPORT})")
    args = parser.parse_args(argv)
    if args.install_peers and args.peers is None:
        args.peers = True
    if args.rounds is None:
        args.rounds = 1 if args.quick or args.sweep_pgqueuer else 3
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.sweep_pgqueuer:
        args.only, args.systems = ["drain"], ["pgqueuer"]
        if args.peers is False:
            parser.error("--sweep-pgqueuer needs the peers")
    elif args.output is None:
        args.output = REPORT
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(10**6)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    compile_sources()  # outbox's as the peers' are: pip compiled theirs at install
    command = "python -m bench " + shlex.join(sys.argv[1:] if argv is None else argv)
    sizes = Sizes.of(args.quick)
    peer_python = None if args.plan else peers_python(args)
    systems = [
        s for s in args.systems if s in (OURS, BASELINE) or peer_python is not None or args.plan
    ]
    preparations = {"both": PREPARATIONS, "analyze": (True,), "fresh": (False,)}
    cases = plan_cases(systems, args.only, preparations[args.preparation], args.sweep_pgqueuer)
    if not cases:
        raise SystemExit("nothing to run: see --only and --systems (and the peers' venv)")
    estimate = args.rounds * sum(expected_seconds(case, sizes) for case in cases)
    plan = (
        f"{len(cases)} cases x {args.rounds} round(s) = {len(cases) * args.rounds} runs, "
        f"about {estimate / 60:.0f} minutes (estimated; order seed {args.seed})"
    )
    if args.plan:
        print(plan)
        for case in cases:
            print(f"  {case.name}: about {expected_seconds(case, sizes):.0f}s")
        return 0
    server = server_dsn()
    header = [f"$ {command}", *machine(server), "Shared machine: the figures are indicative."]
    print("\n".join(header), flush=True)
    print(plan, file=sys.stderr, flush=True)

    started = time.monotonic()
    outcomes: list[Outcome] = []
    results: dict[Case, list[Result]] = {case: [] for case in cases}
    total = len(cases) * args.rounds
    for round_ in range(1, args.rounds + 1):
        order = list(cases)
        random.Random(args.seed * 1000 + round_).shuffle(order)
        for case in order:
            n = len(outcomes) + 1
            print(f"  [{n}/{total}] round {round_}: {case.name} ...", end="",
                  file=sys.stderr, flush=True)  # fmt: skip
            outcome = run_case(case, round_, sizes, args.timeout, server, peer_python)
            outcomes.append(outcome)
            results[case].append(outcome.result)
            if outcome.error or outcome.result is None:
                print(f" failed ({outcome.seconds:.0f}s)", file=sys.stderr)
                print(f"{case.name} failed: {outcome.error}", file=sys.stderr, flush=True)
            else:
                metric = "p50_ms" if case.workload == "latency" else "jobs_per_s"
                figure = number(float(outcome.result.get(metric, 0)), metric)
                unit = "ms p50" if metric == "p50_ms" else "jobs/s"
                print(f" {figure} {unit} ({outcome.seconds:.0f}s)", file=sys.stderr, flush=True)
    spent = time.monotonic() - started
    header.append(f"Runs: {total} in {spent / 60:.1f} minutes; order seed {args.seed} "
                  f"(--seed {args.seed} repeats the order)")  # fmt: skip

    tables, below = report(results, outcomes, sizes, args.rounds, args.quick)
    runs = runs_list(outcomes)
    print()
    print(header[-1])
    for body in tables:
        print()
        print("\n".join(render_text(body)))
    print()
    print("\n".join([*below, "", *runs]))

    if args.output is not None:
        title = "pgqueuer's batch sizes" if args.sweep_pgqueuer else (
            "outbox, procrastinate, pgqueuer and a raw-SQL limit")  # fmt: skip
        markdown = ["# Benchmark: " + title, "", "```", *header, "```", ""]
        for body in tables:
            markdown += [*render_markdown(body), ""]
        markdown += [*below, "", *runs, ""]
        args.output.write_text("\n".join(markdown))
        print(f"\nwritten to {args.output}", file=sys.stderr)
    return 1 if any(o.error for o in outcomes) else 0


if __name__ == "__main__":
    raise SystemExit(main())
