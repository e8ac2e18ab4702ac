"""Prometheus metrics of a relay.

Counters and histograms are per process (with ``--processes N`` they are summed
through prometheus-client's multiprocess mode). Queue-level gauges come from the
database (relay/gauges.py). Labels are bounded: queue, type, outcome; never uuid or key.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Sequence
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, values
from prometheus_client.metrics import MetricWrapperBase

if TYPE_CHECKING:
    from .execute import Outcome

JOBS_COMPLETED = Counter(
    "outbox_jobs_completed_total",
    "Attempts a relay finished, by outcome: succeeded, retried (failed, will run again), dead.",
    ["queue", "type", "outcome"],
)
HANDLER_DURATION = Histogram(
    "outbox_handler_duration_seconds",
    "Time handlers took, successful or not.",
    ["queue", "type"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
CLAIM_BATCH = Histogram(
    "outbox_claim_batch_size",
    "Jobs taken by one claim.",
    buckets=(0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
)
CLAIM_DURATION = Histogram(
    "outbox_claim_duration_seconds",
    "Round trip of one claim transaction.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)
COMPLETION_DURATION = Histogram(
    "outbox_completion_duration_seconds",
    "Round trip of one completion transaction (many jobs each).",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)
IN_FLIGHT = Gauge(
    "outbox_jobs_in_flight",
    "Jobs claimed by this relay and not yet completed.",
    multiprocess_mode="livesum",
)


def record_outcomes(done: Sequence[Outcome]) -> None:
    """Count a completed batch: one labelled counter increment per (queue, type, outcome),
    one labelled histogram per (queue, type), however many jobs the batch holds."""
    counts: Tally[tuple[str, str, str]] = Tally()
    durations: dict[tuple[str, str], list[float]] = {}
    for outcome in done:
        job = outcome.job
        counts[job.queue, job.type, outcome.label] += 1
        durations.setdefault((job.queue, job.type), []).append(outcome.duration_ms / 1000)
    for (queue, type_, outcome_name), count in counts.items():
        JOBS_COMPLETED.labels(queue, type_, outcome_name).inc(count)
    for (queue, type_), seconds in durations.items():
        histogram = HANDLER_DURATION.labels(queue, type_)
        for value in seconds:
            histogram.observe(value)


RESCUED = Counter("outbox_jobs_rescued_total", "Jobs whose expired lease this relay rescued.")
ISOLATED_RUNS = Counter(
    "outbox_isolated_runs_total",
    "Jobs run alone in their process because they lost a lease beside other jobs (G6).",
)
FENCING_REJECTIONS = Counter(
    "outbox_fencing_rejections_total",
    "Completions refused because the job's lease had passed to another relay (G3).",
)
DATABASE_ERRORS = Counter(
    "outbox_database_errors_total",
    "Database errors met by a relay, by the part that met them; each is retried.",
    ["component"],
)
RECONNECTS = Counter(
    "outbox_database_reconnects_total",
    "Connections a relay made again after losing them (its LISTEN connection).",
)
WAKEUPS = Counter(
    "outbox_wakeups_total",
    "Why an idle relay looked for work: a notification (notify), its poll interval (poll), or "
    "a quick look while its idle mark is not confirmed yet (retry).",
    ["source"],
)

SEALED_ROWS = Counter(
    "outbox_history_sealed_rows_total",
    "History rows this relay sealed into the digest chain (only the sealing relay counts).",
)

# Periodic jobs (relay/scheduler.py): read from each schedule's row by every relay that declares
# it, so all of them report the same instants; "livemax" keeps the latest across processes.
SCHEDULE_NEXT_TICK = Gauge(
    "outbox_schedule_next_tick_timestamp_seconds",
    "When a schedule's next tick is due (Unix time); past it by more than a few seconds, no "
    "relay that declares the schedule is running.",
    ["schedule"],
    multiprocess_mode="livemax",
)
SCHEDULE_LAST_TICK = Gauge(
    "outbox_schedule_last_tick_timestamp_seconds",
    "The latest tick of a schedule whose job was enqueued (Unix time).",
    ["schedule"],
    multiprocess_mode="livemax",
)


def write_to_files() -> None:
    """From now on, this process's metrics go to prometheus-client's multiprocess files
    (``PROMETHEUS_MULTIPROC_DIR``, set by the caller), where its supervisor sums them.

    For a relay process forked from its supervisor (relay/supervisor.py): the metrics were
    made in the supervisor before the fork, in memory, because prometheus-client chooses where
    values live when it is imported. Each metric made so far, the application's too, and each
    labelled series already used, is made again on files; references to them stay valid.
    """
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    collectors = list(REGISTRY._collector_to_names)  # every metric made with the default registry
    for metric in collectors:
        if not isinstance(metric, MetricWrapperBase):
            continue
        if metric._is_parent():  # type: ignore[no-untyped-call]
            with metric._lock:
                series = list(metric._metrics.values())
            for child in series:
                child._metric_init()  # type: ignore[no-untyped-call]
        else:
            metric._metric_init()  # type: ignore[no-untyped-call]
