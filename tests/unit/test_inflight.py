"""The in-flight ledger, dispatch and lease timeouts of one relay process, without a database."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import structlog
from outbox_relay import pace
from outbox_relay.dispatch import Dispatcher
from outbox_relay.execute import Outcome
from outbox_relay.inflight import Group, GroupBroken, InFlight
from outbox_relay.leases import Heartbeat

import outbox
from outbox.job import Job
from outbox.publish.target import Delivery, Message

LOG = structlog.get_logger("test")


def job(type_: str = "a.b", attempt: int = 1, key: str | None = None, **fields: Any) -> Job:
    made = {
        "uuid": uuid4(), "type": type_, "queue": "default", "key": key, "payload": {},
        "attempt": attempt, "max_attempts": 3, "enqueued_at": datetime.now(UTC),
        "idempotency_key": "k",
    }  # fmt: skip
    return Job(**{**made, **fields})


def ledger() -> tuple[InFlight, threading.Event]:
    wake = threading.Event()
    return InFlight(wake, LOG), wake


REGISTRY = outbox.Registry()
REGISTRY.register("a.b", lambda job: None)


class Completions:
    """Stands in for the completer: outcomes are written at once, all owned."""

    def __init__(self, inflight: InFlight) -> None:
        self.inflight = inflight
        self.outcomes: list[Outcome] = []
        self.done = threading.Event()

    def submit(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)
        self.inflight.finished([outcome], [])
        self.done.set()


def test_claimed_jobs_hold_places_until_finished() -> None:
    inflight, _ = ledger()
    held = inflight.add([job(), job()], REGISTRY)
    assert inflight.busy(claim=10) == 2
    assert inflight.alone() is None
    inflight.finished([Outcome(held[0].job, 1.0)], [Outcome(held[1].job, 0.0)])
    assert inflight.busy(claim=10) == 0
    assert inflight.alone() is True


def test_outcomes_awaiting_completion_hold_no_place_up_to_two_claims() -> None:
    inflight, _ = ledger()
    held = inflight.add([job() for _ in range(3)], REGISTRY)
    for running in held:
        assert inflight.begin(running, 30)
        inflight.complete_later(running)
    # Three outcomes wait; two claims (2 x 1) of them hold no place, the third does.
    assert inflight.busy(claim=1) == 1


def test_an_outcome_of_an_earlier_claim_does_not_release_a_later_one() -> None:
    inflight, _ = ledger()
    [later] = inflight.add([job(attempt=2)], REGISTRY)
    stale = Outcome(job(attempt=1, uuid=later.job.uuid), 0.0)
    inflight.finished([], [stale])
    assert inflight.busy(claim=10) == 1


def test_a_success_of_a_keyed_job_wakes_the_producer() -> None:
    inflight, wake = ledger()
    [held] = inflight.add([job(key="acct:1")], REGISTRY)
    inflight.finished([Outcome(held.job, 1.0)], [])
    assert wake.is_set()


def test_a_job_past_its_timeout_is_given_up_on_and_its_thread_counts_as_stuck() -> None:
    inflight, _ = ledger()
    [held] = inflight.add([job()], REGISTRY)
    assert inflight.begin(held, 0.01)
    expired, broken = inflight.expire(time.monotonic() + 1)
    assert expired == [held]
    assert broken == []
    assert held.abandoned
    assert inflight.alone() is False  # a stuck thread could still crash the process
    assert inflight.returned(held)  # its handler came back at last
    inflight.finished([Outcome(held.job, 1.0)], [])
    assert inflight.alone() is True


def test_a_session_handler_past_its_timeout_breaks_its_group_and_only_it_is_given_up() -> None:
    inflight, _ = ledger()
    members = inflight.add([job() for _ in range(3)], REGISTRY)
    group = Group(members)
    for running in members:
        running.group = group
        assert inflight.begin(running, None)  # untimed until its handler starts
    inflight.enter_group(group, 4242)
    inflight.time_handler(group, members[1], 0.01)
    assert [r.deadline is None for r in members] == [True, False, True]
    expired, broken = inflight.expire(time.monotonic() + 1)
    assert expired == [members[1]]
    assert broken == [(group, 4242)]
    again = inflight.regroup(group)
    assert again == [members[0], members[2]]
    assert all(r.started is None and r.group is None for r in again)
    try:
        inflight.time_handler(group, members[2], 1)
    except GroupBroken:
        pass
    else:
        raise AssertionError("a broken group's thread runs no further handler")
    assert inflight.leave_group(group)


def test_a_group_that_ended_is_never_broken() -> None:
    inflight, _ = ledger()
    members = inflight.add([job()], REGISTRY)
    group = Group(members)
    members[0].group = group
    inflight.begin(members[0], None)
    inflight.time_handler(group, members[0], 0.01)
    assert not inflight.leave_group(group)
    assert inflight.expire(time.monotonic() + 1) == ([], [])


def test_leases_are_renewed_only_within_timeouts() -> None:
    inflight, _ = ledger()
    slow, waiting = inflight.add([job(), job()], REGISTRY)
    inflight.begin(slow, 0.01)
    assert set(inflight.leased(time.monotonic() + 1)) == {waiting.job.uuid}


def test_shutdown_takes_back_what_never_started() -> None:
    inflight, _ = ledger()
    started, unstarted = inflight.add([job(), job()], REGISTRY)
    inflight.begin(started, 30)
    assert inflight.take_unstarted() == [unstarted]
    assert inflight.running() == 1


def dispatcher(
    inflight: InFlight, completions: Any, concurrency: int = 2, registry: outbox.Registry = REGISTRY
) -> Dispatcher:
    settings = outbox.Settings(dsn="postgresql://unused", concurrency=concurrency)
    return Dispatcher(inflight, completions, registry, None, "r:1:a", settings, LOG)  # type: ignore[arg-type]


class HeldTarget:
    """A publish target whose calls wait until released, counting the calls that began."""

    extra = "none"

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls: list[int] = []

    def start(self, limits: object) -> None: ...

    def close(self) -> None: ...

    def publish(self, message: Message) -> Delivery:
        return self.publish_many([message])[0]

    def publish_many(self, messages: list[Message]) -> list[Delivery]:
        self.calls.append(len(messages))
        self.release.wait(5)
        return [Delivery("delivered", "ok") for _ in messages]


@dataclasses.dataclass
class Publishing:
    """A dispatcher over one destination whose target holds its calls, and a claim of
    ``count`` publish jobs for it, not yet dispatched."""

    target: HeldTarget
    inflight: InFlight
    completions: Completions
    dispatch: Dispatcher
    claimed: list[Job]


@contextlib.contextmanager
def publishing(target: HeldTarget, count: int) -> Iterator[Publishing]:
    """Releases the target's calls at the end and waits for every outcome."""
    registry = outbox.Registry()
    registry.destination("events", target)
    inflight, _ = ledger()
    completions = Completions(inflight)
    dispatch = dispatcher(inflight, completions, concurrency=4, registry=registry)
    claimed = [job("publish:events", payload={"message": {"n": n}}) for n in range(count)]
    try:
        yield Publishing(target, inflight, completions, dispatch, claimed)
    finally:
        target.release.set()
        deadline = time.monotonic() + 5
        while len(completions.outcomes) < count and time.monotonic() < deadline:
            completions.done.wait(0.05)
        dispatch.shutdown()
    assert all(o.succeeded for o in completions.outcomes)


def calls_begun(target: HeldTarget, count: int) -> None:
    deadline = time.monotonic() + 5
    while len(target.calls) < count and time.monotonic() < deadline:
        time.sleep(0.005)


def test_the_jobs_of_a_running_batch_call_hold_one_place_together() -> None:
    """A publish call sends up to BATCH messages from one thread: its jobs hold that thread's
    place, not one each. Counted one each, a claim of publish jobs filled every place until
    its calls returned together, and the producer claimed only then: claims and publishes
    took turns instead of overlapping (JetStream: 10 to 11 thousand messages/s instead of 12
    to 13)."""
    with publishing(HeldTarget(), 250) as run:
        run.dispatch.dispatch(run.claimed)
        assert run.inflight.busy(claim=500) >= 3  # no fewer than the calls, started or not
        calls_begun(run.target, 3)
        assert sorted(run.target.calls) == [50, 100, 100]
        assert run.inflight.busy(claim=500) == 3  # three calls, three threads
    assert run.inflight.busy(claim=500) == 0
    assert run.inflight.alone() is True


class ClaimSizedTarget(HeldTarget):
    """A held target that takes a claim's messages in one call, as the brokers' do."""

    batch_size = 500


def test_a_batch_call_that_begins_wakes_the_producer_waiting_for_room() -> None:
    """A claim of 500 publish jobs holds 500 places until its call begins, then one: the
    producer, waiting for room meanwhile, must hear of it then. Woken only when a call
    returned, it claimed again only after each call's confirms: claims and publishes took
    turns."""
    with publishing(ClaimSizedTarget(), 500) as run:
        run.inflight.space.clear()  # the producer found no room and waits on this
        run.dispatch.dispatch(run.claimed)
        calls_begun(run.target, 1)
        assert run.target.calls == [500]
        assert run.inflight.space.wait(2)  # woken while the call is out, not when it returns
        assert run.inflight.busy(claim=500) == 1
        assert not run.completions.outcomes


def test_plain_jobs_run_in_the_handler_threads_and_their_outcomes_go_to_the_completer() -> None:
    inflight, _ = ledger()
    completions = Completions(inflight)
    dispatch = dispatcher(inflight, completions)
    claimed = [job() for _ in range(5)]
    dispatch.dispatch(claimed)
    deadline = time.monotonic() + 5
    while len(completions.outcomes) < 5 and time.monotonic() < deadline:
        completions.done.wait(0.05)
    dispatch.shutdown()
    assert sorted(o.job.uuid for o in completions.outcomes) == sorted(j.uuid for j in claimed)
    assert all(o.succeeded for o in completions.outcomes)
    assert inflight.alone() is True


def test_a_finished_job_leaves_no_reference_cycle_for_the_collector() -> None:
    """Each job's objects are freed as soon as it is done, not kept until a collection: at
    20,000 jobs/s the cycles of a chunk's future and its jobs held about 10 MiB between
    collections (a relay's peak memory in a drain)."""
    inflight, _ = ledger()
    completions = Completions(inflight)
    dispatch = dispatcher(inflight, completions)
    gc.collect()
    gc.disable()
    try:
        dispatch.dispatch([job() for _ in range(40)])
        deadline = time.monotonic() + 5
        while (
            len(completions.outcomes) < 40 or inflight.running()
        ) and time.monotonic() < deadline:
            completions.done.wait(0.05)
        assert len(completions.outcomes) == 40
        completions.outcomes.clear()
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        left = {type(thing).__qualname__ for thing in gc.garbage}
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
        dispatch.shutdown()
    assert left.isdisjoint({"Running", "Job", "Future"}), left


def test_a_job_of_an_unknown_type_fails_for_good_without_a_thread() -> None:
    inflight, _ = ledger()
    completions = Completions(inflight)
    dispatcher(inflight, completions).dispatch([job("no.such")])
    [outcome] = completions.outcomes
    assert outcome.permanent


def test_the_heartbeat_fails_a_handler_past_its_timeout_and_moves_the_jobs_behind_it() -> None:
    release = threading.Event()
    registry = outbox.Registry()
    ran: list[int] = []

    @registry.handler("slow.one", timeout=0.05)
    def slow(job: Job) -> None:
        ran.append(job.payload.get("n", 0))
        if not job.payload.get("n"):
            release.wait(5)

    inflight, _ = ledger()
    completions = Completions(inflight)
    settings = outbox.Settings(dsn="postgresql://unused", concurrency=2,
                               lease=timedelta(seconds=60))  # fmt: skip
    dispatch = Dispatcher(inflight, completions, registry, None, "r:1:a", settings, LOG)  # type: ignore[arg-type]
    beat = Heartbeat(None, "r:1:a", settings, ["default"], inflight, dispatch, completions, LOG)  # type: ignore[arg-type]
    hung = job("slow.one")
    behind = job("slow.one", payload={"n": 1})
    try:
        # Two threads, three jobs: chunks of two, so one job waits behind the hung one.
        dispatch.dispatch([hung, behind, job("slow.one", payload={"n": 2})])
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any(
            o.job.uuid == hung.uuid for o in completions.outcomes
        ):
            beat.expire_timeouts()
            time.sleep(0.02)
        [failed] = [o for o in completions.outcomes if o.job.uuid == hung.uuid]
        assert "past its timeout" in (failed.error or {})["message"]
        while time.monotonic() < deadline and 1 not in ran:
            time.sleep(0.02)
        assert 1 in ran  # the job behind it ran on the other thread, not after it
        assert not release.is_set()
    finally:
        release.set()
        dispatch.shutdown()


def test_claims_follow_the_handlers_pace_between_the_threads_and_the_ceiling(
    monkeypatch: Any,
) -> None:
    clock = [100.0]
    monkeypatch.setattr(pace.time, "monotonic", lambda: clock[0])
    claims = pace.Pace(floor=16, ceiling=500)
    assert claims.limit(0) == 16  # nothing measured yet: one job per thread
    clock[0] += 1.0
    assert claims.limit(20_000) == 500  # 20,000 jobs/s: 100 ms of it is 2,000, capped
    clock[0] += 1.0
    assert claims.limit(20_010) == 500  # the handlers slowed to 10 jobs/s: smoothed, still fast
    clock[0] += 1.0
    slow = claims.limit(20_020)
    clock[0] += 1.0
    slower = claims.limit(20_030)
    assert slow > slower >= 16
    for _ in range(20):
        clock[0] += 1.0
        assert claims.limit(20_030) >= 16
    assert claims.limit(20_030) == 16  # slow handlers: nothing claimed far ahead
