"""One relay process: claim, execute, complete, heartbeat, rescue, listen; and shut down well.

The producer loop claims as many jobs as there are free handler threads, and sleeps
when none is ready until a notification, the poll interval or the next scheduled job
wakes it. Services run in threads of their own and all stop the same way.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import gc
import importlib.metadata
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import prometheus_client
import sqlalchemy as sa
import structlog
from prometheus_client.registry import CollectorRegistry

from outbox.database import create_engine, libpq_dsn
from outbox.job import Job
from outbox.registry import Handler, Registry
from outbox.settings import Settings
from relay import complete, execute, metrics
from relay.claim import claim_batch, next_run_at
from relay.complete import Completer
from relay.execute import Outcome
from relay.http import HttpServer, Readiness, format_addr
from relay.log import first_line
from relay.notify import Listener
from relay.rescue import Rescuer
from relay.sealer import Sealer
from relay.sql import queries
from relay.upkeep import Upkeep

EXTEND = sa.text(queries["extend_leases"])
ANNOUNCE = sa.text(queries["relay_heartbeat"])
LEAVE = sa.text(queries["relay_gone"])
VERSION = importlib.metadata.version("outbox")
SESSION_GROUP = 8  # session-handler jobs completed per transaction, at most
GC_YOUNG_THRESHOLD = 10_000  # allocations between collections of the youngest generation

log = structlog.get_logger("outbox.relay")


def relay_identity() -> str:
    """host:pid:nonce, as history records which relay did what."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


@dataclasses.dataclass(slots=True)
class Running:
    """A claimed job in this process, from claim to completion."""

    job: Job
    handler: Handler | None
    future: concurrent.futures.Future[Any] | None = None
    started: float | None = None  # monotonic
    deadline: float | None = None
    #: Past its timeout: failed and completed already; its thread may still be running.
    abandoned: bool = False
    #: Ran; its outcome waits for the completer's next batch.
    completing: bool = False


class Worker:
    """A relay process. ``run()`` blocks until ``stop()``; both are thread-safe."""

    def __init__(
        self,
        registry: Registry,
        dsn: str,
        settings: Settings,
        *,
        queues: Sequence[str] | None = None,
        identity: str | None = None,
        metrics_addr: tuple[str, int] | None = None,
    ) -> None:
        self.registry = registry
        self.settings = settings
        self.queues = list(queues or registry.queues(settings.default_queue))
        self.relay = identity or relay_identity()
        self.concurrency = settings.concurrency
        lease_ms = int(settings.lease.total_seconds() * 1000)
        connect_args = {
            "application_name": f"outbox relay {self.relay}"[:63],
            "connect_timeout": 5,
            # A relay stopped mid-transaction (SIGSTOP, a hung handler) must not hold
            # its fence forever: PostgreSQL ends the session, and the rescuer can act.
            "options": f"-c idle_in_transaction_session_timeout={lease_ms}",
        }
        self.engine = create_engine(
            dsn,
            pool_size=self.concurrency + 4,
            max_overflow=4,
            pool_pre_ping=True,
            pool_timeout=10,
            connect_args=connect_args,
        )
        # The hot path, claims and batch completions, is one statement each: autocommit makes
        # each a single round trip (no BEGIN, no COMMIT, no ping); a lost connection fails the
        # statement, which is retried on a fresh one.
        self.fast = create_engine(
            dsn,
            isolation_level="AUTOCOMMIT",
            pool_size=4,
            max_overflow=4,
            pool_timeout=10,
            connect_args=connect_args,
        )
        self._running: dict[UUID, Running] = {}
        self._guard = threading.Lock()
        self._stuck = 0  # handler threads still busy with abandoned jobs
        self._completing = 0  # jobs whose outcome waits for the completer
        self._space = threading.Event()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._pool = concurrent.futures.ThreadPoolExecutor(
            self.concurrency, thread_name_prefix="outbox-handler"
        )
        self.completer = Completer(self.fast, self.relay, registry, self._finished)
        self.rescuer = Rescuer(
            self.engine, registry, settings.default_max_attempts, settings.rescue_interval
        )
        self.sealer = Sealer(self.engine, settings.seal_interval, self.relay)
        self.upkeep = Upkeep(self.engine)
        self.listener = Listener(
            libpq_dsn(dsn),
            self.queues,
            self._wake,
            application_name=f"outbox relay {self.relay} listen",
        )
        self._threads: list[threading.Thread] = []
        self.http: HttpServer | None = None
        if metrics_addr is not None:
            self.gauges = metrics.QueueGauges(self.engine)
            collectors: CollectorRegistry = prometheus_client.REGISTRY
            collectors.register(self.gauges)
            self.http = HttpServer(
                metrics_addr, collectors, Readiness(self.engine), lambda: not self._stopped.is_set()
            )
        self._max_attempts = {h.type: h.max_attempts for h in registry}
        self.log = log.bind(relay=self.relay)

    # -- lifecycle --------------------------------------------------------------------

    def run(self) -> None:
        self.log.info("relay started", queues=self.queues, concurrency=self.concurrency)
        _settle_garbage_collector()
        self._announce()
        self._start("completer", self.completer.run)
        self._start("rescuer", self.rescuer.run)
        if self.settings.seal_interval:
            self._start("sealer", self.sealer.run)
        self._start("upkeep", self.upkeep.run)
        self._start("listener", self.listener.run)
        self._start("heartbeat", self._heartbeat)
        if self.http is not None:
            self._start("http", self.http.run)
            self.log.info("metrics served", address=format_addr(self.http.address))
        try:
            self._produce()
        finally:
            self._shutdown()

    def stop(self) -> None:
        """Stop claiming; finish or release in-flight jobs within the grace period."""
        self._stopping.set()
        self._wake.set()
        self._space.set()

    def wait_stopped(self, timeout: float | None = None) -> bool:
        return self._stopped.wait(timeout)

    def _start(self, name: str, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, name=f"outbox-{name}", daemon=True)
        thread.start()
        self._threads.append(thread)

    # -- claiming ---------------------------------------------------------------------

    def _produce(self) -> None:
        failures = 0
        batch = self.settings.claim_batch
        busy_queue = False  # the last claim came back full: more work is waiting
        while not self._stopping.is_set():
            # Claims run ahead of the handler threads by up to one batch, so that threads
            # never wait for a claim round trip; the queued jobs' leases are renewed too.
            self._space.clear()  # before counting: a job finishing after the count sets it
            capacity = self.concurrency + batch - self._busy()
            # While work is waiting, claim in large batches: the handlers free room quickly,
            # and each claim costs a commit whatever its size (a third of the claims of a
            # drain took a few jobs each). When the queue runs dry, claim whatever fits.
            if capacity <= 0 or (busy_queue and capacity < batch // 2):
                self._space.wait(0.5)
                continue
            self._wake.clear()
            try:
                jobs = self._claim(min(capacity, batch))
            except sa.exc.DBAPIError as exc:
                metrics.DATABASE_ERRORS.labels("claim").inc()
                failures += 1
                delay = min(5.0, 0.1 * 2**failures)
                self.log.warning(
                    "claim failed; retrying", error=first_line(exc), retry_in=round(delay, 2)
                )
                self._stopping.wait(delay)
                continue
            failures = 0
            busy_queue = len(jobs) == min(capacity, batch)
            if jobs:
                self._dispatch(jobs)
            else:
                woken = self._wake.wait(self._idle_wait())
                metrics.WAKEUPS.labels("notify" if woken else "poll").inc()

    def _claim(self, limit: int) -> list[Job]:
        with metrics.CLAIM_DURATION.time(), self.fast.connect() as connection:
            jobs = claim_batch(
                connection,
                queues=self.queues,
                limit=limit,
                lease=self.settings.lease,
                relay=self.relay,
                default_max_attempts=self.settings.default_max_attempts,
                max_attempts=self._max_attempts,
            )
        metrics.CLAIM_BATCH.observe(len(jobs))
        return jobs

    def _idle_wait(self) -> float:
        """Until the poll interval, or sooner if a scheduled job falls due before it."""
        wait = self.settings.poll_interval.total_seconds()
        try:
            with self.engine.connect() as connection:
                due = next_run_at(connection, self.queues)
        except sa.exc.DBAPIError:
            return wait
        if due is not None:
            wait = min(wait, max(0.0, (due - datetime.now(UTC)).total_seconds()))
        return wait

    def _busy(self) -> int:
        """Jobs that hold a place: claimed and not yet run (or running), plus stuck threads.
        Outcomes waiting for their completion batch hold none, up to two claim batches of
        them, so claiming goes on while a completion is written (the pipeline never drains)."""
        with self._guard:
            completing = self._completing
            allowance = 2 * self.settings.claim_batch
            return len(self._running) - completing + self._stuck + max(0, completing - allowance)

    def _complete_later(self, running: Running, outcome: Outcome) -> None:
        with self._guard:
            if running.job.uuid in self._running and not running.completing:
                running.completing = True
                self._completing += 1
        self._space.set()
        self.completer.submit(outcome)

    # -- executing --------------------------------------------------------------------

    def _dispatch(self, jobs: list[Job]) -> None:
        group: list[Running] = []
        plain: list[Running] = []
        with self._guard:
            for job in jobs:
                running = Running(job, self.registry.get(job.type))
                self._running[job.uuid] = running
            metrics.IN_FLIGHT.set(len(self._running))
            for running in [self._running[job.uuid] for job in jobs]:
                if running.handler is None:
                    running.completing = True
                    self._completing += 1
                    self.completer.submit(execute.unknown_type(running.job))
                elif running.handler.takes_session:
                    group.append(running)
                else:
                    plain.append(running)
            # Plain jobs go to the threads in even chunks: one hand-off per chunk, not per job.
            size = max(1, -(-len(plain) // self.concurrency))
            for start in range(0, len(plain), size):
                chunk = plain[start : start + size]
                future = self._submit(self._run_chunk, chunk, chunk)
                for member in chunk:
                    member.future = future
            for start in range(0, len(group), SESSION_GROUP):
                chunk = group[start : start + SESSION_GROUP]
                future = self._submit(self._run_group, chunk, chunk)
                for member in chunk:
                    member.future = future

    def _submit(
        self, task: Callable[[Any], None], argument: Any, members: list[Running]
    ) -> concurrent.futures.Future[Any]:
        future = self._pool.submit(task, argument)
        future.add_done_callback(lambda f: self._task_done(f, members))
        return future

    def _task_done(self, future: concurrent.futures.Future[Any], members: list[Running]) -> None:
        """A task that raised would leave its jobs here, their leases renewed for ever; drop
        them instead, so their leases expire and the rescuer gives them back (G2)."""
        if future.cancelled() or future.exception() is None:
            return
        self.log.error("handler task failed", error=first_line(future.exception()))  # type: ignore[arg-type]
        self._finished([], [Outcome(r.job, 0.0) for r in members])

    def _begin(self, running: Running) -> bool:
        """Mark a job started, unless shutdown released it or another thread started it."""
        with self._guard:
            if running.job.uuid not in self._running or running.started is not None:
                return False
            running.started = time.monotonic()
            running.deadline = running.started + self._timeout(running.handler)
            return True

    def _timeout(self, handler: Handler | None) -> float:
        if handler is not None and handler.timeout is not None:
            return handler.timeout
        return self.settings.handler_timeout.total_seconds()

    def _run_chunk(self, chunk: list[Running]) -> None:
        for running in chunk:
            self._run_one(running)

    def _run_one(self, running: Running) -> None:
        if not self._begin(running):
            return
        assert running.handler is not None
        outcome = execute.run(running.handler, running.job)
        with self._guard:
            if running.abandoned:
                self._stuck -= 1
                self._space.set()
                return
        self._complete_later(running, outcome)

    def _run_group(self, group: list[Running]) -> None:
        started = [r for r in group if self._begin(r)]
        if not started:
            return
        timeout_ms = int(max(self._timeout(r.handler) for r in started) * 1000)
        work = [(r.handler, r.job) for r in started if r.handler is not None]
        deferred = self._run_in_transaction(work, timeout_ms)
        if deferred:
            self.log.info("session jobs met a deadlock; running them alone", jobs=len(deferred))
        for item in deferred:  # alone, a job that still deadlocks fails and is retried later
            self._run_in_transaction([item], timeout_ms)

    def _run_in_transaction(
        self, work: list[tuple[Handler, Job]], timeout_ms: int
    ) -> list[tuple[Handler, Job]]:
        try:
            with metrics.COMPLETION_DURATION.time(), self.engine.connect() as connection:
                outcomes, lost, deferred = complete.run_in_transaction(
                    connection, self.relay, work, self.registry, timeout_ms
                )
        except Exception as exc:  # the connection died, or the transaction could not end
            metrics.DATABASE_ERRORS.labels("complete").inc()
            # Nothing was committed; the leases expire and the jobs run again (G2).
            self.log.error("session jobs not completed", jobs=len(work), error=first_line(exc))
            self._finished([], [Outcome(job, 0.0) for _, job in work])
            return []
        for job in lost:
            self.log.warning("lease lost before running", uuid=str(job.uuid), type=job.type)
        metrics.FENCING_REJECTIONS.inc(len(lost))
        self._finished(outcomes, [Outcome(job, 0.0) for job in lost])
        return deferred

    def _finished(self, done: Sequence[Outcome], lost: Sequence[Outcome]) -> None:
        with self._guard:
            for outcome in (*done, *lost):
                running = self._running.pop(outcome.job.uuid, None)
                if running is not None and running.completing:
                    self._completing -= 1
            metrics.IN_FLIGHT.set(len(self._running))
        self._space.set()
        metrics.record_outcomes(done)
        if any(o.job.key is not None and o.succeeded for o in done):
            self._wake.set()  # the next job of that key is its head now
        debug = self.log.is_enabled_for(logging.DEBUG)
        for outcome in done:
            if debug or not outcome.succeeded:
                self._log_outcome(outcome)

    def _log_outcome(self, outcome: Outcome) -> None:
        job = outcome.job
        fields = {
            "uuid": str(job.uuid),
            "type": job.type,
            "key": job.key,
            "queue": job.queue,
            "attempt": job.attempt,
            "duration_ms": round(outcome.duration_ms, 2),
        }
        error = outcome.error or {}
        if outcome.succeeded:
            self.log.debug("job succeeded", **fields)
        elif outcome.dead:
            self.log.error("job dead", error=error.get("message"), traceback=error.get("traceback"),
                           error_type=error.get("type"), **fields)  # fmt: skip
        else:
            # The traceback is in the job's history; the log says what and which job.
            self.log.warning("job failed; will retry", error=error.get("message", "")[:300],
                             error_type=error.get("type"), **fields)  # fmt: skip

    # -- leases -----------------------------------------------------------------------

    def _heartbeat(self) -> None:
        """Extend leases of jobs within their timeouts; fail those past them."""
        every = self.settings.lease.total_seconds() / 3
        next_extend = time.monotonic() + every
        while not self._stopped.wait(0.2):
            self._expire_timeouts()
            if time.monotonic() >= next_extend:
                next_extend = time.monotonic() + every
                self._extend()
                self._announce()

    def _expire_timeouts(self) -> None:
        now = time.monotonic()
        expired = []
        with self._guard:
            for running in self._running.values():
                if (
                    running.deadline is not None
                    and now > running.deadline
                    and not running.abandoned
                    and not (running.handler and running.handler.takes_session)
                ):
                    running.abandoned = True
                    self._stuck += 1
                    expired.append(running)
        for running in expired:
            self._rescue_chunk_of(running)
            error = TimeoutError(
                f"handler ran past its timeout of {self._timeout(running.handler)}s"
            )
            started = running.started or now
            self.completer.submit(
                Outcome(running.job, (now - started) * 1000, execute.describe(error))
            )

    def _rescue_chunk_of(self, stuck: Running) -> None:
        """Jobs queued behind a stuck handler in its chunk move to other threads."""
        with self._guard:
            waiting = [
                r for r in self._running.values()
                if r.future is stuck.future and r.started is None and r is not stuck
            ]  # fmt: skip
        for running in waiting:
            running.future = self._submit(self._run_chunk, [running], [running])

    def _announce(self) -> None:
        """Tell status and metrics this relay is alive, for one more lease."""
        params = {
            "relay": self.relay,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "queues": self.queues,
            "concurrency": self.concurrency,
            "version": VERSION,
            "ttl": self.settings.lease,
        }
        try:
            with self.engine.begin() as connection:
                connection.execute(ANNOUNCE, params)
        except sa.exc.DBAPIError as exc:
            metrics.DATABASE_ERRORS.labels("heartbeat").inc()
            self.log.warning("relay heartbeat failed", error=first_line(exc))

    def _extend(self) -> None:
        now = time.monotonic()
        with self._guard:
            live = [
                r.job.uuid
                for r in self._running.values()
                if not r.abandoned and (r.deadline is None or now <= r.deadline)
            ]
        if not live:
            return
        try:
            with self.engine.begin() as connection:
                connection.execute(
                    EXTEND, {"uuid": live, "relay": self.relay, "lease": self.settings.lease}
                )
        except sa.exc.DBAPIError as exc:
            metrics.DATABASE_ERRORS.labels("heartbeat").inc()
            self.log.warning("lease heartbeat failed", error=first_line(exc))

    # -- shutdown ---------------------------------------------------------------------

    def _shutdown(self) -> None:
        grace = time.monotonic() + self.settings.shutdown_grace.total_seconds()
        unstarted = self._cancel_unstarted()
        if unstarted:
            try:
                with self.engine.connect() as connection:
                    complete.release(connection, self.relay, unstarted)
            except sa.exc.DBAPIError as exc:
                self.log.warning("could not release unstarted jobs", error=first_line(exc))
        while time.monotonic() < grace:
            self._space.clear()
            if not self._busy_running():
                break
            self._space.wait(0.1)
        left = self._busy_running()
        self.completer.stop()
        for service in (self.rescuer, self.listener, self.sealer, self.upkeep):
            service.stop()
        if self.http is not None:
            self.http.stop()
            prometheus_client.REGISTRY.unregister(self.gauges)
            self.gauges.close()
        with contextlib.suppress(sa.exc.DBAPIError), self.engine.begin() as connection:
            connection.execute(LEAVE, {"relay": self.relay})
        self._stopped.set()
        for thread in self._threads:
            thread.join(timeout=max(1.0, grace - time.monotonic()))
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.engine.dispose()
        self.fast.dispose()
        if left:
            self.log.warning(
                "stopped with handlers still running; their leases will expire", jobs=left
            )
        self.log.info("relay stopped", released=len(unstarted))

    def _cancel_unstarted(self) -> list[Job]:
        with self._guard:
            unstarted = [
                r for r in self._running.values() if r.started is None and r.handler is not None
            ]
            for running in unstarted:
                del self._running[running.job.uuid]
            futures = {id(r.future): r.future for r in unstarted if r.future is not None}
        for future in futures.values():
            future.cancel()
        return [r.job for r in unstarted]

    def _busy_running(self) -> int:
        with self._guard:
            return sum(1 for r in self._running.values() if not r.abandoned)


def _settle_garbage_collector() -> None:
    """Keep the cyclic collector off the long-lived heap (libraries, the application, pools).

    At full speed every job allocates a few short-lived containers, and each full collection
    walked everything imported at startup: about a fifth of the relay's CPU in a profile.
    Objects that exist when the relay starts are frozen out of collection, and young
    generations are collected less often.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
