"""Dispatch: claimed jobs go to the handler threads.

Handlers without a session run in even chunks, one hand-off per chunk, and their outcomes
go to the completer. Handlers with a session run in groups of up to SESSION_GROUP, all of one
timeout, inside their completion transaction (relay/complete.py), so their writes commit
with it exactly once (G3). A group whose handler runs past its timeout is broken: its
transaction is ended, that job alone fails, and the others run again (G6).
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
import structlog

from outbox.job import Job
from outbox.registry import Handler, Registry
from outbox.settings import Settings

from . import complete, execute, metrics
from .complete import Completer
from .execute import Outcome
from .inflight import Group, InFlight, Running
from .log import first_line
from .service import database_fault

SESSION_GROUP = 8  # session-handler jobs completed per transaction, at most
HANDLER_THREAD_PREFIX = "outbox-handler"
TERMINATE = sa.text("SELECT pg_terminate_backend(:pid)")


class Dispatcher:
    def __init__(
        self,
        inflight: InFlight,
        completer: Completer,
        registry: Registry,
        engine: sa.Engine,
        relay: str,
        settings: Settings,
        log: structlog.typing.FilteringBoundLogger,
    ) -> None:
        self._inflight = inflight
        self._completer = completer
        self._registry = registry
        self._engine = engine
        self._relay = relay
        self._concurrency = settings.concurrency
        self._default_timeout = settings.handler_timeout.total_seconds()
        self._log = log
        self._pool = concurrent.futures.ThreadPoolExecutor(
            settings.concurrency, thread_name_prefix=HANDLER_THREAD_PREFIX
        )
        #: The jobs of each submitted task until it is done (dict operations are atomic).
        self._members: dict[concurrent.futures.Future[Any], list[Running]] = {}

    def timeout(self, handler: Handler | None) -> float:
        """Seconds one attempt of ``handler`` may take: its own timeout, else the default."""
        if handler is not None and handler.timeout is not None:
            return handler.timeout
        return self._default_timeout

    def dispatch(self, jobs: Sequence[Job]) -> None:
        group: list[Running] = []
        plain: list[Running] = []
        batches: dict[str, list[Running]] = {}
        for running in self._inflight.add(jobs, self._registry):
            if running.handler is None:
                self._inflight.complete_later(running)
                self._completer.submit(execute.unknown_type(running.job))
            elif running.handler.takes_session:
                group.append(running)
            elif running.handler.batch is not None:
                batches.setdefault(running.handler.type, []).append(running)
            else:
                plain.append(running)
        # A batch handler (a destination that publishes in batches) takes its type's jobs of
        # the claim together, up to its target's batch_size a call: sent at once, confirmed
        # together.
        for same in batches.values():
            assert same[0].handler is not None  # sorted into batches by its handler
            size = same[0].handler.batch_size
            for start in range(0, len(same), size):
                chunk = same[start : start + size]
                future = self._submit(self._run_batch, chunk, chunk)
                for member in chunk:
                    member.future = future
        # Plain jobs go to the threads in even chunks: one hand-off per chunk, not per job.
        # With per-queue limits each job goes alone (a claim takes no more than the free
        # threads then), so no job waits behind another queue's in a chunk.
        size = 1 if self._inflight.limited else max(1, -(-len(plain) // self._concurrency))
        for start in range(0, len(plain), size):
            chunk = plain[start : start + size]
            future = self._submit(self._run_chunk, chunk, chunk)
            for member in chunk:
                member.future = future
        self.submit_groups(group)

    def submit_groups(self, members: list[Running]) -> None:
        """Session jobs go in groups of up to SESSION_GROUP per transaction, each group of
        one timeout, so that the transaction's statement timeout is every member's own. With
        per-queue limits, each group holds one queue's jobs: a slow queue's handler never
        holds up another queue's job in its transaction."""
        by_timeout: dict[tuple[float, str], list[Running]] = {}
        limited = self._inflight.limited
        for running in members:
            queue = running.job.queue if limited else ""
            by_timeout.setdefault((self.timeout(running.handler), queue), []).append(running)
        for same in by_timeout.values():
            for start in range(0, len(same), SESSION_GROUP):
                group = Group(same[start : start + SESSION_GROUP])
                for member in group.members:
                    member.group = group
                future = self._submit(self._run_group, group, group.members)
                for member in group.members:
                    member.future = future

    def move_waiting(self, stuck: Running) -> None:
        """Jobs queued behind a stuck handler in its chunk move to other threads."""
        for running in self._inflight.waiting_behind(stuck):
            running.future = self._submit(self._run_chunk, [running], [running])

    def break_group(self, group: Group, backend_pid: int | None) -> None:
        """End a hung group's transaction, so nothing of it commits and its row locks go,
        then run its other members again in new groups, at the same attempt (not charged)."""
        if backend_pid is not None:
            try:
                with self._engine.connect() as connection:
                    connection.execute(TERMINATE, {"pid": backend_pid})
                    connection.commit()
            except sa.exc.DBAPIError as exc:
                # The session's idle timeout (the handler's timeout + 5 s) ends it anyway.
                database_fault("complete", "could not end a hung handler's transaction", exc)
        again = self._inflight.regroup(group)
        self._log.warning(
            "a handler ran past its timeout; its neighbours run again", jobs=len(again)
        )
        if again:
            self.submit_groups(again)

    def cancel(self, unstarted: Sequence[Running]) -> None:
        """Shutdown: the tasks of jobs taken back before they started need not run."""
        futures = {id(r.future): r.future for r in unstarted if r.future is not None}
        for future in futures.values():
            future.cancel()

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- in the handler threads ------------------------------------------------------------

    def _submit(
        self, task: Callable[[Any], None], argument: Any, members: list[Running]
    ) -> concurrent.futures.Future[Any]:
        future = self._pool.submit(task, argument)
        # Its jobs are found by the future, not captured in the callback: a future keeps its
        # callbacks once done, and each job keeps its future, so a closure over the jobs made
        # every chunk a reference cycle, freed only by the cyclic collector (about 10 MiB of
        # a draining relay's memory waited for it).
        self._members[future] = members
        future.add_done_callback(self._task_done)
        return future

    def _task_done(self, future: concurrent.futures.Future[Any]) -> None:
        """A task that raised would leave its jobs held here, their leases renewed for ever;
        drop them instead, so their leases expire and the rescuer gives them back (G2)."""
        members = self._members.pop(future, [])
        if future.cancelled() or future.exception() is None:
            return
        self._log.error("handler task failed", error=first_line(future.exception()))  # type: ignore[arg-type]
        self._inflight.finished([], [Outcome(r.job, 0.0) for r in members])

    def _run_chunk(self, chunk: list[Running]) -> None:
        for running in chunk:
            self._run_one(running)

    def _run_one(self, running: Running) -> None:
        if not self._inflight.begin(running, self.timeout(running.handler)):
            return
        assert running.handler is not None
        self._returned(running, execute.run(running.handler, running.job))

    def _run_batch(self, chunk: list[Running]) -> None:
        handler = chunk[0].handler
        assert handler is not None
        started = [r for r in chunk if self._inflight.begin(r, self.timeout(handler))]
        if not started:
            return
        self._inflight.share(len(started) - 1)
        try:
            outcomes = execute.run_batch(handler, [r.job for r in started])
        finally:
            self._inflight.share(1 - len(started))
        for running, outcome in zip(started, outcomes, strict=True):
            self._returned(running, outcome)

    def _returned(self, running: Running, outcome: Outcome) -> None:
        """A plain handler's outcome goes to the completer, unless the job was given up on
        past its timeout (failed and completed already)."""
        if not self._inflight.returned(running):
            self._inflight.complete_later(running)
            self._completer.submit(outcome)

    def _run_group(self, group: Group) -> None:
        members = [r for r in group.members if self._inflight.begin(r, None)]
        if not members:
            return
        deferred = self._run_in_transaction(group, members)
        if deferred:
            self._log.info("session jobs met a deadlock; running them alone", jobs=len(deferred))
        for running in deferred:  # alone, a job that still deadlocks fails and is retried later
            alone = Group([running])
            running.group = alone
            self._run_in_transaction(alone, [running])
            self._inflight.disband(alone)
        self._inflight.disband(group)

    def _run_in_transaction(self, group: Group, members: list[Running]) -> list[Running]:
        """Run ``members`` in one transaction; returns those deferred by a deadlock."""
        timeout = self.timeout(members[0].handler)  # one timeout per group (submit_groups)
        work = [(r.handler, r.job) for r in members if r.handler is not None]
        by_uuid = {r.job.uuid: r for r in members}

        def running(job: Job | None) -> None:
            current = None if job is None else by_uuid[job.uuid]
            self._inflight.time_handler(group, current, timeout)

        broken = False
        try:
            with metrics.COMPLETION_DURATION.time(), self._engine.connect() as connection:
                pid = connection.connection.driver_connection.info.backend_pid  # type: ignore[union-attr]
                self._inflight.enter_group(group, pid)
                try:
                    outcomes, lost, deferred = complete.run_in_transaction(
                        connection, self._relay, work, self._registry, int(timeout * 1000), running
                    )
                finally:
                    broken = self._inflight.leave_group(group)
                    if broken:  # its backend was ended, or is being ended: never reuse it
                        connection.invalidate()
        except Exception as exc:  # the connection died, or the transaction could not end
            if broken:
                self._inflight.broken_group_left(group)
                return []
            # Nothing was committed; the leases expire and the jobs run again (G2).
            metrics.DATABASE_ERRORS.labels("complete").inc()
            self._log.error("session jobs not completed", jobs=len(work), error=first_line(exc))
            self._inflight.finished([], [Outcome(job, 0.0) for _, job in work])
            return []
        if broken:  # it committed as the heartbeat broke it: the reruns meet their fence
            self._inflight.broken_group_left(group)
            return []
        for job in lost:
            self._log.warning("lease lost before running", uuid=str(job.uuid), type=job.type)
        metrics.FENCING_REJECTIONS.inc(len(lost))
        self._inflight.finished(outcomes, [Outcome(job, 0.0) for job in lost])
        return [by_uuid[job.uuid] for _, job in deferred]
