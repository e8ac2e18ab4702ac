"""The queue gauges: depth by queue and state, the oldest ready job's age, dead jobs, blocked
keys, ready jobs no live relay can run, live relays and the seal lag. They come from the
database, read by one relay at a time (the holder of an advisory lock) when Prometheus
scrapes, and cached for a few seconds, so that a fleet of relays does not read the same
numbers many times over.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import sqlalchemy as sa
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from outbox import locks
from outbox.audit import seal
from outbox.status import snapshot

from .leader import Leadership
from .service import database_fault

#: Session-level advisory lock whose holder exports the queue gauges: (class, id).
GAUGE_LOCK = locks.GAUGES
GAUGE_TTL = 5.0  # seconds a reading of the queues is served before the next one


class QueueGauges(Collector):
    """Depth, oldest ready age, dead jobs and blocked keys, from one relay at a time."""

    def __init__(self, engine: sa.Engine) -> None:
        self._lock = threading.Lock()
        self._leadership = Leadership(engine, GAUGE_LOCK)
        self._read_at = 0.0
        self._families: list[GaugeMetricFamily] = []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            if time.monotonic() - self._read_at > GAUGE_TTL:
                self._families = self._read()
                self._read_at = time.monotonic()
            families = self._families
        yield from families

    def close(self) -> None:
        with self._lock:
            self._leadership.resign()

    def _read(self) -> list[GaugeMetricFamily]:
        try:
            leader = self._leadership.take()
            if leader is None:
                return []
            current = snapshot(leader)
            current_lag = seal.lag_seconds(leader)
            leader.commit()
        except sa.exc.DBAPIError as exc:
            database_fault("gauges", "reading the queue gauges failed", exc)
            self._leadership.resign()
            return []
        depth = GaugeMetricFamily(
            "outbox_queue_depth", "Live jobs by queue and state.", labels=["queue", "state"]
        )
        oldest = GaugeMetricFamily(
            "outbox_oldest_ready_job_age_seconds",
            "How long the oldest ready job of a queue has waited.",
            labels=["queue"],
        )
        dead = GaugeMetricFamily("outbox_dead_jobs", "Jobs that ended dead.", labels=["queue"])
        blocked = GaugeMetricFamily(
            "outbox_blocked_keys", "Keys whose head job is dead (G4).", labels=["queue"]
        )
        lag = GaugeMetricFamily(
            "outbox_seal_lag_seconds",
            "Age of the oldest history row not yet sealed into the digest chain (0: all sealed).",
            value=current_lag,
        )
        live = GaugeMetricFamily(
            "outbox_relays_live",
            "Relays whose heartbeat has not expired.",
            value=len(current.relays),
        )
        # Relays claim only the types they have handlers for: these wait for one that does.
        unrunnable = GaugeMetricFamily(
            "outbox_unrunnable_jobs",
            "Ready jobs no live relay can run: none takes their queue with a handler for "
            "their type (a consumer not deployed yet).",
            labels=["queue", "type"],
        )
        unrunnable_age = GaugeMetricFamily(
            "outbox_unrunnable_job_age_seconds",
            "How long the oldest ready job that no live relay can run has waited.",
            labels=["queue", "type"],
        )
        for waiting in current.unrunnable:
            unrunnable.add_metric([waiting.queue, waiting.type], waiting.jobs)
            unrunnable_age.add_metric([waiting.queue, waiting.type], waiting.oldest_seconds)
        per_queue: dict[str, int] = {}
        for key in current.blocked_keys:
            per_queue[key.queue] = per_queue.get(key.queue, 0) + 1
        for q in current.queues:
            for state, count in (
                ("ready", q.ready), ("scheduled", q.scheduled),
                ("running", q.running), ("dead", q.dead),
            ):  # fmt: skip
                depth.add_metric([q.queue, state], count)
            oldest.add_metric([q.queue], q.oldest_ready_seconds or 0.0)
            dead.add_metric([q.queue], q.dead)
            blocked.add_metric([q.queue], per_queue.get(q.queue, 0))
        return [depth, oldest, dead, blocked, unrunnable, unrunnable_age, live, lag]
