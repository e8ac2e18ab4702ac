"""The jobs a relay process holds, from claim to completion, and how many more it may claim.

The ledger is the one place that knows which claimed jobs have started, which are timed and
when their timeouts end, which session jobs share a transaction, which outcomes wait for the
completer, and how many handler threads are stuck in handlers past their timeouts. With
per-queue limits (relay/queues.py) it also counts, per queue, the jobs that hold one of the
queue's places, so a claim takes no more of a queue than its free room. Every method takes
the one lock, so the producer, the handler threads, the completer and the heartbeat can all
use it.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any
from uuid import UUID

import structlog

from outbox.job import Job
from outbox.registry import Handler, Registry

from . import metrics
from .execute import Outcome
from .log import log_outcome


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


class InFlight:
    """The ledger of one relay process (thread-safe)."""

    def __init__(
        self,
        wake: threading.Event,
        log: structlog.typing.FilteringBoundLogger,
        limits: Mapping[str, int] | None = None,
    ) -> None:
        self.guard = threading.Lock()
        #: Set whenever a place may have come free: a job finished, a thread came back.
        self.space = threading.Event()
        #: Each queue's most jobs at once here, or None: the queues share every place.
        self._limits = dict(limits) if limits is not None else None
        #: Per limited queue: jobs held and not yet run (or running), plus stuck threads.
        self._occupied = dict.fromkeys(limits, 0) if limits is not None else None
        self._wake = wake
        self._log = log
        self._running: dict[UUID, Running] = {}
        self._stuck = 0  # handler threads still busy with abandoned jobs
        self._completing = 0  # jobs whose outcome waits for the completer
        #: Jobs that run in a batch call beside its first: one call holds one thread, so
        #: they hold no place of their own (a batch handler's jobs share their call's).
        self._sharing = 0
        #: Jobs finished here so far (completed, failed or given up): the pace of claims.
        self.finished_total = 0
        #: Of those, the ones that may have made a job ready behind the last one claimed: a
        #: job with a key (its key's next job) or one that did not succeed (relay/floors.py).
        self.reordered_total = 0

    # -- claiming ----------------------------------------------------------------------

    def add(self, jobs: Sequence[Job], registry: Registry) -> list[Running]:
        """Hold newly claimed jobs. A job rescued while its handler still ran here comes back
        only through claim_isolated, once nothing runs here: never beside its own earlier run."""
        with self.guard:
            fresh = [Running(job, registry.get(job.type)) for job in jobs]
            for running in fresh:
                self._running[running.job.uuid] = running
            if self._occupied is not None:
                for running in fresh:
                    self._occupy(running.job.queue, 1)
            metrics.IN_FLIGHT.set(len(self._running))
        return fresh

    def busy(self, claim: int) -> int:
        """Jobs that hold a place: claimed and not yet run (or running), plus stuck threads;
        the jobs of a running batch call hold one place together (a thread).
        Outcomes waiting for their completion batch hold none, up to two claims (of ``claim``
        jobs) of them, so claiming goes on while a completion is written (the pipeline never
        drains)."""
        with self.guard:
            completing = self._completing
            allowance = 2 * claim
            held = len(self._running) - completing - self._sharing
            return held + self._stuck + max(0, completing - allowance)

    @property
    def limited(self) -> bool:
        """Whether the queues have limits of their own (else they share every place)."""
        return self._limits is not None

    def rooms(self) -> dict[str, int] | None:
        """Per limited queue, how many more of its jobs may be claimed now; None without
        limits. A job holds its queue's place from its claim until its handler returns (or,
        stuck past its timeout, until its thread comes back): never more than the limit of
        a queue's handlers run at once, and none waits for a thread another queue holds."""
        with self.guard:
            if self._limits is None or self._occupied is None:
                return None
            return {q: limit - self._occupied[q] for q, limit in self._limits.items()}

    def alone(self) -> bool | None:
        """True when nothing is held here, False when a thread is stuck in a handler past its
        timeout (it could still crash the process), None while jobs are held."""
        with self.guard:
            if self._stuck:
                return False
            return None if self._running else True

    def running(self) -> int:
        """Jobs held here whose handlers have not been given up on."""
        with self.guard:
            return sum(1 for r in self._running.values() if not r.abandoned)

    # -- running -----------------------------------------------------------------------

    def begin(self, running: Running, timeout: float | None) -> bool:
        """Mark a job started, unless shutdown released it or another thread started it. Its
        timeout runs from now; None: not yet (a session job's runs from its handler's start)."""
        with self.guard:
            if self._running.get(running.job.uuid) is not running or running.started is not None:
                return False
            running.started = time.monotonic()
            if timeout is not None:
                running.deadline = running.started + timeout
            return True

    def share(self, change: int) -> None:
        """A batch call began (``change``: its jobs but one) or returned (minus as many):
        its jobs hold its thread's one place together while it runs. Without this, a claim
        of publish jobs held every place it took until its calls all returned at once, and
        the producer claimed only then: claims and publishes took turns instead of
        overlapping. A call that begins frees its jobs' places but one, so the producer
        waiting for room hears of it then, not when some call returns."""
        with self.guard:
            self._sharing += change
        self.space.set()

    def time_handler(self, group: Group, current: Running | None, timeout: float) -> None:
        """Only the session handler running now is timed: the others wait, or are done.
        Raises GroupBroken if the heartbeat broke the group."""
        with self.guard:
            if group.broken:
                raise GroupBroken
            for member in group.members:
                member.deadline = None
            if current is not None:
                current.deadline = time.monotonic() + timeout

    def returned(self, running: Running) -> bool:
        """A plain handler returned: True if it had been given up on (past its timeout), in
        which case its thread is free again and its outcome was already written."""
        with self.guard:
            if not running.abandoned:
                return False
            self._stuck -= 1
            if self._occupied is not None:
                self._occupy(running.job.queue, -1)
        self.space.set()
        return True

    def complete_later(self, running: Running) -> None:
        """Its outcome waits for the completer: it holds no place meanwhile."""
        with self.guard:
            if self._running.get(running.job.uuid) is running and not running.completing:
                running.completing = True
                self._completing += 1
                if self._occupied is not None:
                    self._occupy(running.job.queue, -1)
        self.space.set()

    def finished(self, done: Sequence[Outcome], lost: Sequence[Outcome]) -> None:
        """Outcomes written (``done``) or given up (``lost``: their leases will expire)."""
        with self.guard:
            for outcome in (*done, *lost):
                running = self._running.get(outcome.job.uuid)
                if running is None or running.job.attempt != outcome.job.attempt:
                    continue  # a later claim of the same job runs here now
                del self._running[outcome.job.uuid]
                if running.completing:
                    self._completing -= 1
                elif self._occupied is not None:
                    self._occupy(running.job.queue, -1)
            self.finished_total += len(done) + len(lost)
            self.reordered_total += len(lost)
            self.reordered_total += sum(1 for o in done if o.job.key is not None or not o.succeeded)
            metrics.IN_FLIGHT.set(len(self._running))
        self.space.set()
        metrics.record_outcomes(done)
        if any(o.job.key is not None and o.succeeded for o in done):
            self._wake.set()  # the next job of that key is its head now
        debug = self._log.is_enabled_for(logging.DEBUG)
        for outcome in done:
            if debug or not outcome.succeeded:
                log_outcome(self._log, outcome)

    # -- groups --------------------------------------------------------------------------

    def enter_group(self, group: Group, backend_pid: int) -> None:
        with self.guard:
            group.backend_pid = backend_pid

    def leave_group(self, group: Group) -> bool:
        """The group's transaction has ended; True if the heartbeat broke it meanwhile."""
        with self.guard:
            group.done = True
            return group.broken

    def disband(self, group: Group) -> None:
        """A group whose transaction ended unbroken lets go of its members. Each keeps its
        group (a done group tells the heartbeat that the outcome is being written), but the
        group no longer keeps them: a member and its group referring to each other would
        make every session job garbage that only the cyclic collector frees."""
        with self.guard:
            if group.done and not group.broken:
                group.members = []

    def broken_group_left(self, group: Group) -> None:
        """The thread of a group the heartbeat broke is free again."""
        with self.guard:
            self._stuck -= 1
            if self._occupied is not None:
                for member in group.members:
                    if member.abandoned:  # the one whose handler held the thread
                        self._occupy(member.job.queue, -1)
        self.space.set()

    def regroup(self, group: Group) -> list[Running]:
        """The members of a broken group to run again, made unstarted."""
        with self.guard:
            again = [
                r for r in group.members
                if self._running.get(r.job.uuid) is r and not r.abandoned and not r.completing
            ]  # fmt: skip
            for running in again:
                running.started = running.deadline = None
                running.group = None
        return again

    # -- timeouts and leases -------------------------------------------------------------

    def expire(self, now: float) -> tuple[list[Running], list[tuple[Group, int | None]]]:
        """Give up on handlers past their timeouts: each is abandoned (its thread counts as
        stuck until it returns); a session handler's group is broken. Returns those given up
        on, and the groups to break with their backends."""
        expired = []
        broken: list[tuple[Group, int | None]] = []
        with self.guard:
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
                if self._occupied is not None:
                    self._occupy(running.job.queue, 1)  # its thread, until it comes back
                expired.append(running)
        return expired, broken

    def waiting_behind(self, stuck: Running) -> list[Running]:
        """Jobs queued behind a stuck handler in its chunk, not yet started."""
        with self.guard:
            return [
                r for r in self._running.values()
                if r.future is stuck.future and r.started is None and r is not stuck
            ]  # fmt: skip

    def leased(self, now: float) -> list[UUID]:
        """Jobs whose leases the heartbeat renews: held, and within their timeouts."""
        with self.guard:
            return [
                r.job.uuid
                for r in self._running.values()
                if not r.abandoned and (r.deadline is None or now <= r.deadline)
            ]

    def take_unstarted(self) -> list[Running]:
        """Shutdown: the jobs claimed and not started leave the ledger, to be given back."""
        with self.guard:
            unstarted = [
                r for r in self._running.values() if r.started is None and r.handler is not None
            ]
            for running in unstarted:
                del self._running[running.job.uuid]
                if self._occupied is not None:
                    self._occupy(running.job.queue, -1)
        return unstarted

    def _occupy(self, queue: str, change: int) -> None:
        """Count a place of ``queue`` taken (1) or given back (-1), under the guard. A queue
        that was full and has room again wakes the producer: it may be waiting for work after
        a claim that left that queue out."""
        assert self._occupied is not None
        assert self._limits is not None
        if queue not in self._occupied:
            return  # not one of this relay's limited queues (never claimed by it)
        before = self._occupied[queue]
        self._occupied[queue] = before + change
        if change < 0 and before >= self._limits[queue] > before + change:
            self._wake.set()
