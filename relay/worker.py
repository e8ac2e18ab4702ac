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
from relay import complete, execute, metrics, preflight
from relay.claim import claim_batch, claim_isolated, isolated_ready, seconds_to_next_run
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
TERMINATE = sa.text("SELECT pg_terminate_backend(:pid)")
LEAVE = sa.text(queries["relay_gone"])
VERSION = importlib.metadata.version("outbox")
SESSION_GROUP = 8  # session-handler jobs completed per transaction, at most
GC_YOUNG_THRESHOLD = 10_000  # allocations between collections of the youngest generation
HANDLER_THREAD_PREFIX = "outbox-handler"
ISOLATION_LOOK = 1.0  # seconds between looks for jobs that must run alone, while busy
ISOLATION_TURN = 2.0  # seconds spent on jobs that must run alone before claiming others again

log = structlog.get_logger("outbox.relay")


def relay_identity() -> str:
    """host:pid:nonce, as history records which relay did what."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


@dataclasses.dataclass(slots=True, eq=False)
class Group:
    """Session jobs that run in one transaction, one after the other.

    A handler that runs past its timeout holds the transaction and the thread; the heartbeat
    then breaks the group: it ends the transaction's backend (nothing of it commits), fails
    that job alone, and runs its neighbours again in new groups, their attempts unchanged.
    """

    members: list[Running]
    backend_pid: int | None = None
    #: The transaction has ended (committed or not); the heartbeat may no longer break it.
    done: bool = False
    #: The heartbeat ended the transaction; the members are no longer this group's.
    broken: bool = False


class GroupBroken(Exception):
    """Raised in a broken group's thread, so no further handler of it runs."""


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
    #: The transaction it runs in, for a handler that takes a session.
    group: Group | None = None


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
        connect_args = {
            "application_name": f"outbox relay {self.relay}"[:63],
            "connect_timeout": 5,
            # A relay stopped mid-transaction (SIGSTOP, a hung handler) must not hold its
            # fence forever: PostgreSQL ends the session, and the rescuer can act. The start-up
            # check (relay/preflight.py) proved that these settings reach the server.
            "options": preflight.session_options(settings),
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
            self.concurrency, thread_name_prefix=HANDLER_THREAD_PREFIX
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
        next_look = 0.0  # when to look again for jobs that must run alone
        while not self._stopping.is_set():
            if time.monotonic() >= next_look:
                next_look = time.monotonic() + ISOLATION_LOOK
                self._run_isolated()
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
                next_look = 0.0  # idle: a job that must run alone may go first
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

    def _run_isolated(self) -> None:
        """Run the jobs that must run alone, one at a time, with nothing else running here.

        Such a job lost its lease beside others when a relay died or hung: any of them may
        have been to blame, so none was charged. Run alone, a crash is its own (G6). Claiming
        stops while the handlers in flight finish; the turn lasts ISOLATION_TURN at most, so
        a backlog of isolated jobs does not stall the others.
        """
        turn_ends = time.monotonic() + ISOLATION_TURN
        while not self._stopping.is_set() and time.monotonic() < turn_ends:
            try:
                with self.fast.connect() as connection:
                    if not isolated_ready(connection, self.queues):
                        return
                if not self._wait_alone():
                    return
                with self.fast.connect() as connection:
                    job = claim_isolated(
                        connection,
                        queues=self.queues,
                        lease=self.settings.lease,
                        relay=self.relay,
                        default_max_attempts=self.settings.default_max_attempts,
                        max_attempts=self._max_attempts,
                    )
            except sa.exc.DBAPIError as exc:
                metrics.DATABASE_ERRORS.labels("claim").inc()
                self.log.warning("claiming a job to run alone failed", error=first_line(exc))
                return
            if job is None:
                return
            self.log.info(
                "running a job alone: it lost its lease beside other jobs",
                uuid=str(job.uuid), type=job.type, key=job.key, attempt=job.attempt,
            )  # fmt: skip
            metrics.ISOLATED_RUNS.inc()
            self._dispatch([job])
            self._wait_alone()

    def _wait_alone(self) -> bool:
        """Wait until no handler runs in this process; False if stopping, or if a thread is
        stuck in a handler past its timeout (it could still crash the process)."""
        while not self._stopping.is_set():
            self._space.clear()
            with self._guard:
                if self._stuck:
                    return False
                if not self._running:
                    return True
            self._space.wait(0.1)
        return False

    def _idle_wait(self) -> float:
        """Until the poll interval, or sooner if a scheduled job falls due before it."""
        wait = self.settings.poll_interval.total_seconds()
        try:
            with self.engine.connect() as connection:
                due_in = seconds_to_next_run(connection, self.queues)
        except sa.exc.DBAPIError:
            return wait
        if due_in is not None:
            wait = min(wait, max(0.0, due_in))
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
            if self._running.get(running.job.uuid) is running and not running.completing:
                running.completing = True
                self._completing += 1
        self._space.set()
        self.completer.submit(outcome)

    # -- executing --------------------------------------------------------------------

    def _dispatch(self, jobs: list[Job]) -> None:
        group: list[Running] = []
        plain: list[Running] = []
        fresh: list[Running] = []
        with self._guard:
            # A job rescued while its handler still ran here comes back only through
            # claim_isolated, once nothing runs here: never beside its own earlier run.
            for job in jobs:
                running = Running(job, self.registry.get(job.type))
                self._running[job.uuid] = running
                fresh.append(running)
            metrics.IN_FLIGHT.set(len(self._running))
            for running in fresh:
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
            self._submit_groups(group)

    def _submit_groups(self, members: list[Running]) -> None:
        """Session jobs go in groups of up to SESSION_GROUP per transaction, each group of
        one timeout, so that the transaction's statement timeout is every member's own."""
        by_timeout: dict[float, list[Running]] = {}
        for running in members:
            by_timeout.setdefault(self._timeout(running.handler), []).append(running)
        for same in by_timeout.values():
            for start in range(0, len(same), SESSION_GROUP):
                group = Group(same[start : start + SESSION_GROUP])
                future = self._submit(self._run_group, group, group.members)
                for member in group.members:
                    member.future = future
                    member.group = group

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

    def _begin(self, running: Running, *, timed: bool = True) -> bool:
        """Mark a job started, unless shutdown released it or another thread started it.
        ``timed``: its timeout runs from now (a session job's runs from its handler's start)."""
        with self._guard:
            if self._running.get(running.job.uuid) is not running or running.started is not None:
                return False
            running.started = time.monotonic()
            if timed:
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

    def _run_group(self, group: Group) -> None:
        members = [r for r in group.members if self._begin(r, timed=False)]
        if not members:
            return
        deferred = self._run_in_transaction(group, members)
        if deferred:
            self.log.info("session jobs met a deadlock; running them alone", jobs=len(deferred))
        for running in deferred:  # alone, a job that still deadlocks fails and is retried later
            alone = Group([running])
            with self._guard:
                running.group = alone
                running.deadline = None
            self._run_in_transaction(alone, [running])

    def _run_in_transaction(self, group: Group, members: list[Running]) -> list[Running]:
        """Run ``members`` in one transaction; returns those deferred by a deadlock."""
        timeout = self._timeout(members[0].handler)  # one timeout per group (_submit_groups)
        work = [(r.handler, r.job) for r in members if r.handler is not None]
        by_uuid = {r.job.uuid: r for r in members}

        def running(job: Job | None) -> None:
            """Only the handler running now is timed: the others wait, or are done."""
            with self._guard:
                if group.broken:
                    raise GroupBroken
                for member in members:
                    member.deadline = None
                if job is not None:
                    by_uuid[job.uuid].deadline = time.monotonic() + timeout

        broken = False
        try:
            with metrics.COMPLETION_DURATION.time(), self.engine.connect() as connection:
                with self._guard:
                    group.backend_pid = connection.connection.driver_connection.info.backend_pid  # type: ignore[union-attr]
                try:
                    outcomes, lost, deferred = complete.run_in_transaction(
                        connection, self.relay, work, self.registry, int(timeout * 1000), running
                    )
                finally:
                    with self._guard:
                        group.done = True
                        broken = group.broken
                    if broken:  # its backend was ended, or is being ended: never reuse it
                        connection.invalidate()
        except Exception as exc:  # the connection died, or the transaction could not end
            if broken:
                return self._left_broken_group()
            metrics.DATABASE_ERRORS.labels("complete").inc()
            # Nothing was committed; the leases expire and the jobs run again (G2).
            self.log.error("session jobs not completed", jobs=len(work), error=first_line(exc))
            self._finished([], [Outcome(job, 0.0) for _, job in work])
            return []
        if broken:  # it committed as the heartbeat broke it: the reruns meet their fence
            return self._left_broken_group()
        for job in lost:
            self.log.warning("lease lost before running", uuid=str(job.uuid), type=job.type)
        metrics.FENCING_REJECTIONS.inc(len(lost))
        self._finished(outcomes, [Outcome(job, 0.0) for job in lost])
        return [by_uuid[job.uuid] for _, job in deferred]

    def _left_broken_group(self) -> list[Running]:
        """The thread of a group the heartbeat broke is free again."""
        with self._guard:
            self._stuck -= 1
        self._space.set()
        return []

    def _finished(self, done: Sequence[Outcome], lost: Sequence[Outcome]) -> None:
        with self._guard:
            for outcome in (*done, *lost):
                running = self._running.get(outcome.job.uuid)
                if running is None or running.job.attempt != outcome.job.attempt:
                    continue  # a later claim of the same job runs here now
                del self._running[outcome.job.uuid]
                if running.completing:
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
        """A handler past its timeout fails alone; its neighbours run on elsewhere (G6)."""
        now = time.monotonic()
        expired = []
        broken: list[tuple[Group, int | None]] = []
        with self._guard:
            for running in self._running.values():
                if running.deadline is None or now <= running.deadline or running.abandoned:
                    continue
                group = running.group
                if group is not None:
                    if group.done or group.broken:
                        continue  # its transaction is ending: the outcome is being written
                    group.broken = True
                    broken.append((group, group.backend_pid))
                running.abandoned = True
                self._stuck += 1
                expired.append(running)
        for group, backend_pid in broken:
            self._break(group, backend_pid)
        for running in expired:
            if running.group is None:
                self._rescue_chunk_of(running)
            error = TimeoutError(
                f"handler ran past its timeout of {self._timeout(running.handler)}s"
            )
            started = running.started or now
            self.completer.submit(
                Outcome(running.job, (now - started) * 1000, execute.describe(error))
            )

    def _break(self, group: Group, backend_pid: int | None) -> None:
        """End a hung group's transaction, so nothing of it commits and its row locks go,
        then run its other members again in new groups, at the same attempt (not charged)."""
        if backend_pid is not None:
            try:
                with self.engine.connect() as connection:
                    connection.execute(TERMINATE, {"pid": backend_pid})
                    connection.commit()
            except sa.exc.DBAPIError as exc:
                # The session's idle timeout (the handler's timeout + 5 s) ends it anyway.
                metrics.DATABASE_ERRORS.labels("complete").inc()
                self.log.warning(
                    "could not end a hung handler's transaction", error=first_line(exc)
                )
        with self._guard:
            again = [
                r for r in group.members
                if self._running.get(r.job.uuid) is r and not r.abandoned and not r.completing
            ]  # fmt: skip
            for running in again:
                running.started = running.deadline = None
                running.group = None
        self.log.warning(
            "a handler ran past its timeout; its neighbours run again", jobs=len(again)
        )
        if again:
            with self._guard:
                self._submit_groups(again)

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
