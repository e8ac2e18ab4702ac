"""The comparison's tables, from the runs' results: medians with their range, ratios, notes.

Pure functions on plain data (no database, no processes), so ``tests/unit`` can hold them:
``python -m bench`` runs the cases and hands every result to :func:`drain_table`,
:func:`other_table` and :func:`reference_notes`.

A cell is "median (min-max)" (an en dash) over the rounds that succeeded; a ratio is
between medians.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

#: One run's result (the driver's JSON line), or None when the run failed.
Result = Mapping[str, Any] | None
Results = Mapping["Case", Sequence[Result]]

OURS = "outbox"
BASELINE = "baseline"
PEERS = ("procrastinate", "pgqueuer")
#: The drain's two preparations, in the order the table shows them.
PREPARATIONS = (True, False)
PREPARATION_NAMES = {True: "after ANALYZE", False: "fresh burst, no ANALYZE"}

DASH = "\u2013"  # an en dash, between a cell's min and max
#: Below this share of a figure DESIGN.md section 6 reports, a peer's figure gets a note.
REFERENCE_SLACK = 0.8


@dataclasses.dataclass(frozen=True, order=True)
class Case:
    """One run of one system under one workload, configuration and preparation."""

    workload: str  # enqueue_single, enqueue_bulk, drain, latency
    system: str  # outbox, procrastinate, pgqueuer, baseline
    processes: int = 1
    #: pgqueuer's --batch-size; the baseline's claim size (for the label only).
    batch: int | None = None
    #: drain only: True after ANALYZE, False for a fresh burst; None for other workloads.
    analyze: bool | None = None

    @property
    def config(self) -> Case:
        """The same case without its preparation: one row of the drain table."""
        return dataclasses.replace(self, analyze=None)

    @property
    def label(self) -> str:
        processes = f"{self.processes} process{'es' if self.processes > 1 else ''}"
        if self.system == BASELINE:
            return f"raw SQL baseline, claims of {self.batch}, {processes} (the limit)"
        if self.system == OURS:
            return f"outbox, its defaults, {processes}"
        if self.system == "pgqueuer" and self.batch is not None:
            return f"pgqueuer, batch {self.batch}, {processes}"
        return f"{self.system}, {processes}"

    @property
    def preparation(self) -> str:
        return "" if self.analyze is None else PREPARATION_NAMES[self.analyze]

    @property
    def name(self) -> str:
        """The case in words, for progress lines and notes."""
        words = [self.workload, self.label]
        if self.analyze is not None:
            words.append(self.preparation)
        return ", ".join(words)


@dataclasses.dataclass(frozen=True)
class Summary:
    median: float
    low: float
    high: float
    count: int


def summarize(values: Sequence[float]) -> Summary | None:
    """Median, minimum and maximum of the values; None when there are none."""
    if not values:
        return None
    return Summary(statistics.median(values), min(values), max(values), len(values))


def number(value: float, metric: str) -> str:
    if metric == "jobs_per_s":
        return f"{value:,.0f}"
    return f"{value:,.1f}"


def values(results: Sequence[Result], metric: str) -> list[float]:
    """The metric from every run that succeeded and reported it."""
    found = []
    for result in results:
        value = None if result is None else result.get(metric)
        if isinstance(value, int | float) and not isinstance(value, bool):
            found.append(float(value))
    return found


def cell(results: Sequence[Result] | None, metric: str) -> str:
    """The median (min-max) over the runs, and how many failed, if any."""
    if results is None:
        return "-"
    summary = summarize(values(results, metric))
    failed = sum(1 for result in results if result is None)
    if summary is None:
        return "failed" if failed else "n/a"
    text = number(summary.median, metric)
    if summary.count > 1:
        text += f" ({number(summary.low, metric)}{DASH}{number(summary.high, metric)})"
    if failed:
        text += f" [{failed} of {len(results)} failed]"
    return text


def median(results: Sequence[Result] | None, metric: str) -> float | None:
    summary = summarize(values(results or [], metric))
    return None if summary is None else summary.median


# --- the drain table ---------------------------------------------------------------


def drain_configs(results: Results) -> list[Case]:
    """The drain table's rows: the baseline, outbox, then each peer, fewer processes first."""
    order = {BASELINE: 0, OURS: 1, **{peer: 2 + n for n, peer in enumerate(PEERS)}}
    configs = {case.config for case in results if case.workload == "drain"}
    return sorted(configs, key=lambda c: (order.get(c.system, 9), c.system, c.batch or 0,
                                          c.processes))  # fmt: skip


def best_peer(results: Results, analyze: bool) -> tuple[Case, float] | None:
    """The peer configuration with the highest median drain rate in this preparation."""
    best: tuple[Case, float] | None = None
    for case, runs in results.items():
        if case.workload != "drain" or case.system not in PEERS or case.analyze is not analyze:
            continue
        rate = median(runs, "jobs_per_s")
        if rate is not None and (best is None or rate > best[1]):
            best = (case, rate)
    return best


def drain_table(results: Results, jobs: int) -> tuple[list[list[str]], list[str]]:
    """Rows of configurations, a column per preparation; then outbox over the best peer and
    over the limit. Returns the table and lines naming the best peer in each preparation."""
    header = [f"drain {jobs:,} no-op jobs (jobs/s)",
              *(PREPARATION_NAMES[a] for a in PREPARATIONS), "peak RSS (MiB)"]  # fmt: skip
    body = [header]
    for config in drain_configs(results):
        runs = {a: results.get(dataclasses.replace(config, analyze=a)) for a in PREPARATIONS}
        every: list[Result] = [r for rs in runs.values() if rs is not None for r in rs]
        body.append([config.label, *(cell(runs[a], "jobs_per_s") for a in PREPARATIONS),
                     cell(every, "peak_rss_mib")])  # fmt: skip
    ours = sorted({c.processes for c in results if c.workload == "drain" and c.system == OURS})
    bests = {a: best_peer(results, a) for a in PREPARATIONS}
    limits = {
        a: median(results.get(Case("drain", BASELINE, 1, _baseline_batch(results), a)),
                  "jobs_per_s")
        for a in PREPARATIONS
    }  # fmt: skip
    for processes in ours:
        label = f"{processes} process{'es' if processes > 1 else ''}"
        rates = {
            a: median(results.get(Case("drain", OURS, processes, None, a)), "jobs_per_s")
            for a in PREPARATIONS
        }
        if any(bests.values()):
            body.append([f"outbox {label} / best peer",
                         *(ratio(rates[a], best[1] if (best := bests[a]) else None)
                           for a in PREPARATIONS), ""])  # fmt: skip
        if any(limits.values()):
            body.append([f"outbox {label}, percent of the limit",
                         *(percent(rates[a], limits[a]) for a in PREPARATIONS), ""])  # fmt: skip
    lines = []
    for a in PREPARATIONS:
        best = bests[a]
        if best is not None:
            lines.append(
                f"Best peer {PREPARATION_NAMES[a]}: {best[0].label} "
                f"({number(best[1], 'jobs_per_s')} jobs/s, median)."
            )
    return body, lines


def _baseline_batch(results: Results) -> int | None:
    return next((c.batch for c in results if c.system == BASELINE), None)


def ratio(ours: float | None, theirs: float | None) -> str:
    if ours is None or theirs is None or theirs <= 0:
        return "-"
    return f"{ours / theirs:.2f}"


def percent(ours: float | None, limit: float | None) -> str:
    if ours is None or limit is None or limit <= 0:
        return "-"
    return f"{100 * ours / limit:.0f}%"


# --- enqueue and latency -----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Row:
    label: str
    workload: str
    metric: str
    higher_is_better: bool


def other_table(rows: Sequence[Row], results: Results, systems: Sequence[str]) -> list[list[str]]:
    """A row per workload and metric, a column per system, and outbox over the best peer
    (between medians)."""
    body = [["workload", *systems, "outbox/best peer"]]
    for row in rows:
        cases = {
            case.system: runs for case, runs in results.items() if case.workload == row.workload
        }
        medians = {s: median(cases.get(s), row.metric) for s in systems}
        peer_values = [v for s, v in medians.items() if s in PEERS and v is not None and v > 0]
        best = None
        if peer_values:
            best = max(peer_values) if row.higher_is_better else min(peer_values)
        body.append([row.label, *(cell(cases.get(s), row.metric) for s in systems),
                     ratio(medians.get(OURS), best)])  # fmt: skip
    return body


# --- DESIGN.md section 6 -----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Reference:
    """A figure DESIGN.md section 6 reports for a system on this class of machine."""

    workload: str
    system: str
    metric: str
    #: The lowest figure it gives (the low end of a range).
    figure: float
    said: str
    processes: int | None = None  # None: any
    batch: int | None = None
    analyze: bool | None = None  # None: any preparation

    def matches(self, case: Case) -> bool:
        return (
            case.workload == self.workload
            and case.system == self.system
            and self.processes in (None, case.processes)
            and self.batch in (None, case.batch)
            and self.analyze in (None, case.analyze)
        )


REFERENCES = (
    Reference("drain", BASELINE, "jobs_per_s", 46_000, "about 46,000 jobs/s"),
    Reference("drain", "pgqueuer", "jobs_per_s", 10_000, "10,000 to 15,000 jobs/s",
              processes=2, batch=50, analyze=True),
    Reference("drain", "pgqueuer", "jobs_per_s", 3_700, "about 3,700 jobs/s",
              processes=2, batch=50, analyze=False),
    Reference("enqueue_bulk", "pgqueuer", "jobs_per_s", 44_000, "about 44,000 jobs/s"),
    Reference("drain", "procrastinate", "jobs_per_s", 700, "about 700 to 900 jobs/s",
              analyze=True),
    Reference("enqueue_bulk", "procrastinate", "jobs_per_s", 14_000, "14,000 jobs/s"),
)  # fmt: skip


def reference_notes(results: Results) -> list[str]:
    """A note for each figure more than 20% below what DESIGN.md section 6 reports."""
    notes = []
    for case in sorted(results):
        for reference in REFERENCES:
            if not reference.matches(case):
                continue
            found = median(results[case], reference.metric)
            if found is None or found >= REFERENCE_SLACK * reference.figure:
                continue
            below = 100 * (1 - found / reference.figure)
            notes.append(
                f"FLAG: {case.name}: median {number(found, reference.metric)} jobs/s is "
                f"{below:.0f}% below DESIGN.md section 6 ({reference.said}); "
                "explain before publishing."
            )
    return notes


# --- rendering ---------------------------------------------------------------------


def render_text(body: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in body) for i in range(len(body[0]))]
    lines = []
    for n, cells in enumerate(body):
        parts = [cells[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(parts).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


def render_markdown(body: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(body[0]) + " |"]
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(body[0]) - 1)) + "|")
    lines += ["| " + " | ".join(cells) + " |" for cells in body[1:]]
    return lines
