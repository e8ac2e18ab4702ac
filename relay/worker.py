"""One relay process: claim, and start and stop the services that do the rest.

The producer loop here claims as many jobs as there are free places (relay/inflight.py), of
each queue no more than its free room when the queues have limits of their own
(relay/queues.py), and hands them to the dispatcher (relay/dispatch.py); it sleeps when none
is ready until a notification, the poll interval or the next scheduled job wakes it, and
makes room now and then for a job that must run alone. The completer, heartbeat
(relay/leases.py), rescuer, sealer, table upkeep, listener and metrics server each run in a
thread of their own, and all stop the same way (relay/service.py).
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import os
import secrets
import socket
import threading
import time
from collections.abc import Mapping, Sequence

import prometheus_client
import sqlalchemy as sa
import structlog
from prometheus_client.registry import CollectorRegistry

from outbox.database import binary_arrays, create_engine, fast_json, libpq_dsn
from outbox.job import Job
from outbox.publish import deliver as destinations
from outbox.registry import Registry
from outbox.settings import Settings

from . import leases, metrics, preflight, service
from .claim import (
    AttemptLimits,
    claim_isolated,
    claim_past,
    filled_a_room,
    fruitless_pause,
    isolated_ready,
    seconds_to_next_run,
)
from .complete import Completer
from .dispatch import Dispatcher
from .floors import Floors, FloorWatch
from .gauges import QueueGauges
from .http import HttpServer, Readiness, format_addr
from .idle import IdleMark, Step
from .inflight import InFlight
from .leases import Heartbeat
from .log import first_line
from .notify import Listener
from .pace import Pace
from .rescue import Rescuer
from .scheduler import Scheduler
from .sealer import Sealer
from .service import database_fault
from .upkeep import Upkeep

GC_YOUNG_THRESHOLD = 10_000  # allocations between collections of the youngest generation
ISOLATION_LOOK = 1.0  # seconds between looks for jobs that must run alone, while busy
ISOLATION_TURN = 2.0  # seconds spent on jobs that must run alone before claiming others again
#: Seconds after a backlog runs dry before this relay's sealer seals its history, instead of
#: at its next interval: time for the completer to write the last outcomes (a few ms).
SEAL_AFTER_BACKLOG = 0.1
#: Seconds added to the time since a claim when the idle wait asks for scheduled jobs that
#: fell due since: the relay times it on its own clock from before the claim was sent, and
#: the two statements' now() are the database's, each taken a network half-trip after its
#: send. A job due in the slack that the claim could not take costs a claim more, not a wait.
CLAIM_CLOCK_SLACK = 0.002

log = structlog.get_logger("outbox.relay")


def relay_identity() -> str:
    """host:pid:nonce, as history records which relay did what."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class Worker:
    """A relay process. ``run()`` blocks until ``stop()``; both are thread-safe.

    ``queues`` share the handler threads (``settings.concurrency`` of them); or
    ``queue_limits`` names the queues with each one's most jobs at once in this process, and
    the process runs their sum of handler threads, whatever ``settings.concurrency`` says
    (the command line refuses the two when they disagree).
    """

    def __init__(
        self,
        registry: Registry,
        dsn: str,
        settings: Settings,
        *,
        queues: Sequence[str] | None = None,
        queue_limits: Mapping[str, int] | None = None,
        identity: str | None = None,
        metrics_addr: tuple[str, int] | None = None,
    ) -> None:
        self.registry = registry
        if queue_limits is not None:
            if queues is not None and list(queues) != list(queue_limits):
                raise ValueError("queues and queue_limits name different queues")
            queues = list(queue_limits)
            settings = dataclasses.replace(settings, concurrency=sum(queue_limits.values()))
        self.settings = settings
        self.queue_limits = dict(queue_limits) if queue_limits is not None else None
        self.queues = list(queues or registry.queues(settings.default_queue))
        self.relay = identity or relay_identity()
        self.concurrency = settings.concurrency
        self.log = log.bind(relay=self.relay)
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
            # No JIT for claims and completions: a claim reading past many jobs of types this
            # relay cannot run (rolling deploys) looks costly to the planner, and compiling it
            # took 200 of its 215 ms where the reading took 12. One generic plan each, kept
            # for the connection: PostgreSQL's own choice planned every claim anew, a third of
            # a one-job claim's 1.5 ms at a trickle. The statements are written so that any
            # plan of them is index-driven (tests/integration/test_relay.py checks both).
            connect_args={
                **connect_args,
                "options": f"{connect_args['options']} -c jit=off"
                " -c plan_cache_mode=force_generic_plan",
            },
        )
        binary_arrays(self.fast)
        fast_json(self.fast)
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self.inflight = InFlight(self._wake, self.log, self.queue_limits)
        self.pace = Pace(settings.concurrency, settings.claim_batch)
        self.floors = Floors()
        self.completer = Completer(self.fast, self.relay, registry, self.inflight)
        self.dispatcher = Dispatcher(
            self.inflight, self.completer, registry, self.engine, self.relay, settings, self.log
        )
        self.idle = IdleMark(
            libpq_dsn(dsn),
            application_name=f"outbox relay {self.relay} idle",
            options=preflight.session_options(settings),
        )
        self.listener = Listener(
            libpq_dsn(dsn),
            self.queues,
            self._wake,
            application_name=f"outbox relay {self.relay} listen",
            on_lost=self.idle.suspect,
        )
        self.heartbeat = Heartbeat(
            self.engine, self.relay, settings, self.queues,
            self.inflight, self.dispatcher, self.completer, self.log,
            types=[handler.type for handler in registry],
        )  # fmt: skip
        # Stopped in this order, after the grace period: the completer writes what it holds.
        self.sealer = (
            Sealer(self.engine, settings.seal_interval, self.relay)
            if settings.seal_interval else None
        )  # fmt: skip
        self._services: list[service.Chore] = [
            self.completer,
            Rescuer(self.engine, settings.rescue_interval),
            *([self.sealer] if self.sealer is not None else []),
            Upkeep(self.engine),
            *([Scheduler(self.engine, registry, settings, self.relay)]
              if registry.schedules else []),
            self.listener,
            self.heartbeat,
            FloorWatch(
                self.engine, self.floors, self.queues, [h.type for h in registry], self._wake
            ),
        ]  # fmt: skip
        self._threads: list[threading.Thread] = []
        self.http: HttpServer | None = None
        if metrics_addr is not None:
            self.gauges = QueueGauges(self.engine)
            collectors: CollectorRegistry = prometheus_client.REGISTRY
            collectors.register(self.gauges)
            self.http = HttpServer(
                metrics_addr, collectors, Readiness(self.engine), lambda: not self._stopped.is_set()
            )
            self._services.append(self.http)
        self._limits = AttemptLimits.of(registry, settings.default_max_attempts)

    # -- lifecycle --------------------------------------------------------------------

    def run(self) -> None:
        self.log.info(
            "relay started", queues=self.queues, concurrency=self.concurrency,
            **({"queue_limits": self.queue_limits} if self.queue_limits else {}),
        )  # fmt: skip
        settle_garbage_collector()
        destinations.start(self.registry, self.settings)  # publishing targets connect
        self.heartbeat.announce()
        service.start(self._services, self._threads)
        if self.http is not None:
            self.log.info("metrics served", address=format_addr(self.http.address))
        try:
            self._produce()
        finally:
            self._shutdown()

    def stop(self) -> None:
        """Stop claiming; finish or release in-flight jobs within the grace period."""
        self._stopping.set()
        self._wake.set()
        self.inflight.space.set()

    def wait_stopped(self, timeout: float | None = None) -> bool:
        return self._stopped.wait(timeout)

    # -- claiming ---------------------------------------------------------------------

    def _produce(self) -> None:
        failures = 0
        fruitless = 0  # claims in a row that found nothing
        busy_queue = False  # the last claim came back full: more work is waiting
        backlog = False  # a claim since the last empty one came back full
        next_look = 0.0  # when to look again for jobs that must run alone
        while not self._stopping.is_set():
            if time.monotonic() >= next_look:
                next_look = time.monotonic() + ISOLATION_LOOK
                self._run_isolated()
            # Claims run ahead of the handler threads by up to one claim, so that threads
            # never wait for a claim round trip; the queued jobs' leases are renewed too. A
            # claim takes about 100 ms of the handlers' recent pace (relay/pace.py).
            batch = self.pace.limit(self.inflight.finished_total)
            self.inflight.space.clear()  # before counting: a job finishing after the count sets it
            capacity = self.concurrency + batch - self.inflight.busy(batch)
            # While work is waiting, claim in large batches: the handlers free room quickly,
            # and each claim costs a commit whatever its size (a third of the claims of a
            # drain took a few jobs each). When the queue runs dry, claim whatever fits.
            if capacity <= 0 or (busy_queue and capacity < batch // 2):
                self.inflight.space.wait(0.5)
                continue
            limit = min(capacity, batch)
            queues, rooms = self._open_queues()
            if rooms is not None:
                # Per-queue limits: only queues with free room are asked, each for no more
                # than its room; a full queue's backlog waits, and so does the producer, for
                # a place to come free (relay/inflight.py sets both events then).
                limit = min(limit, sum(rooms))
                if limit <= 0:
                    self.inflight.space.wait(0.5)
                    continue
            self._wake.clear()
            if self._stopping.is_set():  # stop() set both before the clear: no wake is coming
                break
            try:
                claiming = time.monotonic()
                jobs = self._claim(limit, queues, rooms)
            except sa.exc.DBAPIError as exc:
                failures += 1
                delay = min(5.0, 0.1 * 2**failures)
                database_fault("claim", "claim failed; retrying", exc, retry_in=round(delay, 2))
                self._stopping.wait(delay)
                continue
            failures = 0
            busy_queue = len(jobs) == limit
            if jobs:
                fruitless = 0
                backlog = backlog or busy_queue
                self.dispatcher.dispatch(jobs)
                if busy_queue:
                    self.idle.claimed()
                    continue
                if rooms is not None and filled_a_room(jobs, queues, rooms):
                    # Short only because a queue took all of its room: more of it may wait,
                    # and a place of it that came free during the claim wakes no one.
                    continue
                if not self.idle.ran_dry():
                    continue
                # A short claim read the queue dry, and with the idle mark confirmed every
                # job enqueued since notifies: sleep now, as after an empty claim. At a
                # trickle that is one claim a job, not a claim and an empty one, and the
                # producer is not inside that empty claim when the next job's notice comes.
                step = Step.SLEEP
            else:
                fruitless += 1
                next_look = 0.0  # idle: a job that must run alone may go first
                # Enqueue notifies only while a relay is marked idle (relay/idle.py). Newly
                # marked, claim once more: it finds what was enqueued without a notification.
                step = self.idle.enter()
            if backlog and self.sealer is not None:
                # A backlog ran dry: its history is sealed now, not up to seal_interval later
                # (G7's evidence complete sooner; at a trickle, claims are never full).
                self.sealer.nudge(SEAL_AFTER_BACKLOG)
            backlog = False
            if step is Step.CLAIM_AGAIN:
                fruitless -= 1  # that claim and the next are one look, not two
                continue
            if step is Step.SLEEP:
                wait, source = self._idle_wait(claiming), "poll"
            else:
                longest = functools.partial(self._idle_wait, claiming)
                wait, source = self.idle.retry_in(longest), "retry"
            self._stopping.wait(fruitless_pause(time.monotonic() - claiming, fruitless))
            woken = self._wake.wait(wait)
            if not woken and source == "poll":
                self.idle.check()
            metrics.WAKEUPS.labels("notify" if woken else source).inc()

    def _open_queues(self) -> tuple[list[str], list[int] | None]:
        """The queues to claim from and, with per-queue limits, each one's free room (only
        queues with some)."""
        if self.queue_limits is None:
            return self.queues, None
        rooms = self.inflight.rooms()
        if rooms is None:
            return self.queues, None
        queues = [q for q in self.queues if rooms[q] > 0]
        return queues, [rooms[q] for q in queues]

    def _claim(self, limit: int, queues: list[str], rooms: list[int] | None) -> list[Job]:
        floors = self.floors.params(queues, self.inflight.reordered_total)
        with metrics.CLAIM_DURATION.time(), self.fast.connect() as connection:
            jobs, last = claim_past(
                connection,
                queues=queues,
                rooms=rooms,
                limit=limit,
                lease=self.settings.lease,
                relay=self.relay,
                limits=self._limits,
                floors=floors,
                positions=self.floors.active,
            )
        self.floors.advance(last)
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
                    if not isolated_ready(connection, self.queues, self._limits.types):
                        return
                if not self._wait_alone():
                    return
                with self.fast.connect() as connection:
                    job = claim_isolated(
                        connection,
                        queues=self.queues,
                        lease=self.settings.lease,
                        relay=self.relay,
                        limits=self._limits,
                    )
            except sa.exc.DBAPIError as exc:
                database_fault("claim", "claiming a job to run alone failed", exc)
                return
            if job is None:
                return
            self.log.info(
                "running a job alone: it lost its lease beside other jobs",
                uuid=str(job.uuid), type=job.type, key=job.key, attempt=job.attempt,
            )  # fmt: skip
            metrics.ISOLATED_RUNS.inc()
            self.dispatcher.dispatch([job])
            self._wait_alone()

    def _wait_alone(self) -> bool:
        """Wait until no handler runs in this process; False if stopping, or if a thread is
        stuck in a handler past its timeout (it could still crash the process)."""
        while not self._stopping.is_set():
            self.inflight.space.clear()
            alone = self.inflight.alone()
            if alone is not None:
                return alone
            self.inflight.space.wait(0.1)
        return False

    def _idle_wait(self, claimed_at: float) -> float:
        """Until the poll interval, or sooner if a scheduled job falls due before it; at once
        if one fell due after the claim begun at ``claimed_at`` (monotonic) looked: read only
        past that moment, it waited for the poll interval."""
        wait = self.settings.poll_interval.total_seconds()
        try:
            # On the claims' connections: one round trip. Through the engine's pool (a ping,
            # BEGIN, the query, COMMIT) it took 1.7 ms at the median, and a job whose notice
            # came meanwhile waited for it: at a trickle the producer spent a third of its
            # time here.
            with self.fast.connect() as connection:
                floors = self.floors.current(self.queues)  # the lowest positions when inactive
                since = time.monotonic() - claimed_at + CLAIM_CLOCK_SLACK
                due_in = seconds_to_next_run(
                    connection, self.queues, self._limits.types, floors, since
                )
        except sa.exc.DBAPIError:
            return wait
        if due_in is not None:
            wait = min(wait, max(0.0, due_in))
        return wait

    # -- shutdown ---------------------------------------------------------------------

    def _shutdown(self) -> None:
        grace = time.monotonic() + self.settings.shutdown_grace.total_seconds()
        unstarted = self.inflight.take_unstarted()
        self.dispatcher.cancel(unstarted)
        if unstarted:
            try:
                with self.engine.connect() as connection:
                    leases.release(connection, self.relay, [r.job for r in unstarted])
            except sa.exc.DBAPIError as exc:
                self.log.warning("could not release unstarted jobs", error=first_line(exc))
        while time.monotonic() < grace:
            self.inflight.space.clear()
            if not self.inflight.running():
                break
            self.inflight.space.wait(0.1)
        left = self.inflight.running()
        destinations.close(self.registry)  # after the last handler returned: flushes
        for chore in self._services:
            chore.stop()
        if self.http is not None:
            prometheus_client.REGISTRY.unregister(self.gauges)
            self.gauges.close()
        leases.leave(self.engine, self.relay)
        self._stopped.set()
        for thread in self._threads:
            thread.join(timeout=max(1.0, grace - time.monotonic()))
        self.dispatcher.shutdown()
        self.idle.close()
        self.engine.dispose()
        self.fast.dispose()
        if left:
            self.log.warning(
                "stopped with handlers still running; their leases will expire", jobs=left
            )
        self.log.info("relay stopped", released=len(unstarted))


def settle_garbage_collector() -> None:
    """Keep the cyclic collector off the long-lived heap (libraries, the application, pools).

    At full speed every job allocates a few short-lived containers, and each full collection
    walked everything imported at startup: about a fifth of the relay's CPU in a profile.
    Objects that exist when the relay starts are frozen out of collection, and young
    generations are collected less often.

    ``outbox relay`` pauses collection from its first import (outbox.collector): a process
    that has not collected since it started holds only its start-up heap and a few hundred
    objects of import-time garbage, frozen as they are (a full collection here took 20 ms of
    the start). Where collection ran (a relay inside another program) it runs once first.
    Either way it is on afterwards: a relay's jobs need it.
    """
    if gc.isenabled():
        gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    gc.enable()
