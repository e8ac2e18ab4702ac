"""Per-queue limits: ``--queues payments=4,mail=16`` (or OUTBOX_QUEUES) parsed, contradictions
refused with one line, and the ledger's room per queue, without a database."""

from __future__ import annotations

import os
import re
import threading
import time
from datetime import UTC, datetime
from uuid import uuid4

import pytest
import structlog
from click.testing import CliRunner, Result
from outbox_relay.execute import Outcome
from outbox_relay.inflight import Group, InFlight
from outbox_relay.queues import QueueChoice, parse_queues
from outbox_relay.worker import Worker

import outbox
from outbox.cli import cli
from outbox.job import Job

LOG = structlog.get_logger("test")
REGISTRY = outbox.Registry()
REGISTRY.register("a.b", lambda job: None)

# -- parsing ------------------------------------------------------------------------------


def test_names_alone_share_the_threads() -> None:
    choice = parse_queues(" mail, reports ,")
    assert choice == QueueChoice(("mail", "reports"))
    assert choice.threads is None
    assert str(choice) == "mail,reports"


def test_limits_give_each_queue_its_places_and_the_threads_are_their_sum() -> None:
    choice = parse_queues("payments=4, mail = 16")
    assert choice.names == ("payments", "mail")
    assert choice.limits == {"payments": 4, "mail": 16}
    assert choice.threads == 20
    assert str(choice) == "payments=4,mail=16"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("payments=4,mail", "queue 'mail' has no limit while others have one"),
        ("payments,mail=4", "queue 'payments' has no limit while others have one"),
        ("payments=0", "'payments=0': a queue's limit is a whole number from 1 to 1024"),
        ("payments=x", "'payments=x': a queue's limit is a whole number from 1 to 1024"),
        ("payments=-1", "a queue's limit is a whole number from 1 to 1024"),
        ("payments=1.5", "a queue's limit is a whole number from 1 to 1024"),
        ("payments=²", "a queue's limit is a whole number from 1 to 1024"),
        ("payments=", "a queue's limit is a whole number from 1 to 1024"),
        ("payments=1025", "a queue's limit is a whole number from 1 to 1024"),
        ("=4", "'=4' names no queue; write queue=N"),
        ("mail,mail", "queue 'mail' is named twice"),
        ("mail=1,mail=2", "queue 'mail' is named twice"),
        ("", "name at least one queue"),
        (" , ", "name at least one queue"),
        ("bad name=2", "queue 'bad name' may hold only letters, digits and _ . -"),
        ("a=1000,b=100", "the limits add up to 1100 handler threads; a relay process runs at most"),
    ],
)
def test_bad_queue_lists_are_refused_with_the_reason(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)) as refused:
        parse_queues(text)
    assert "\n" not in str(refused.value)


# -- the command line ----------------------------------------------------------------------


def relay(*args: str, **env: str) -> Result:
    """``outbox relay`` with none of this machine's OUTBOX_* variables, and a database that
    is never reached: every refusal here comes before any connection."""
    unset: dict[str, str | None] = {k: None for k in os.environ if k.startswith("OUTBOX_")}
    argv = ["--dsn", "postgresql://127.0.0.1:1/none", "relay", "--app", "no.such:app", *args]
    return CliRunner().invoke(cli, argv, env={**unset, **env}, prog_name="outbox")


def one_error_line(result: Result) -> str:
    assert result.exit_code == 2, result.output
    [line] = [line for line in result.output.splitlines() if line.startswith("Error:")]
    return line


def test_a_bad_queue_list_is_a_usage_error_naming_the_option() -> None:
    line = one_error_line(relay("--queues", "payments=4,mail"))
    assert line.startswith("Error: Invalid value for '--queues': queue 'mail' has no limit")


def test_a_bad_outbox_queues_variable_is_refused_too() -> None:
    line = one_error_line(relay(OUTBOX_QUEUES="payments=0"))
    assert "'payments=0': a queue's limit is a whole number from 1 to 1024" in line


def test_a_concurrency_that_contradicts_the_limits_is_refused() -> None:
    line = one_error_line(relay("--queues", "payments=4,mail=16", "--concurrency", "8"))
    assert line == (
        "Error: --concurrency 8 contradicts --queues payments=4,mail=16: a process runs the "
        "sum of the queues' limits, 20 handlers at once; leave the concurrency out, or make "
        "it 20"
    )


def test_outbox_concurrency_that_contradicts_outbox_queues_is_refused() -> None:
    line = one_error_line(relay(OUTBOX_QUEUES="a=2,b=2", OUTBOX_CONCURRENCY="16"))
    assert "OUTBOX_CONCURRENCY=16 contradicts OUTBOX_QUEUES=a=2,b=2" in line
    line = one_error_line(relay("--queues", "a=2", OUTBOX_CONCURRENCY="3"))
    assert "OUTBOX_CONCURRENCY=3 contradicts --queues a=2" in line


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (("--queues", "a=2,b=3", "--concurrency", "5"), {}),  # agrees: the sum
        (("--queues", "a=2,b=3"), {}),
        (("--queues", "a=2,b=3"), {"OUTBOX_CONCURRENCY": "5"}),
        (("--queues", "a,b", "--concurrency", "3"), {}),  # no limits: shared threads
        ((), {"OUTBOX_QUEUES": "a=2,b=3"}),
    ],
)
def test_limits_that_agree_with_the_concurrency_pass_to_the_app(
    args: tuple[str, ...], env: dict[str, str]
) -> None:
    result = relay(*args, **env)
    # Past every check of the options: what fails is importing the (missing) app.
    assert "no.such" in result.output, result.output
    assert "--queues" not in result.output
    assert "contradicts" not in result.output


def test_help_says_limits_are_per_process_and_set_the_threads() -> None:
    result = CliRunner().invoke(cli, ["relay", "--help"], terminal_width=78)
    text = " ".join(result.output.split())
    assert "A=N lets at most N jobs of queue A run at once per process" in text
    assert "the threads are the limits' sum" in text
    assert "Concurrency and queue limits apply to each process" in text


# -- the ledger's room per queue -------------------------------------------------------------


def job(queue: str) -> Job:
    return Job(
        uuid=uuid4(), type="a.b", queue=queue, key=None, payload={}, attempt=1, max_attempts=3,
        enqueued_at=datetime.now(UTC), idempotency_key="k",
    )  # fmt: skip


def limited(**limits: int) -> tuple[InFlight, threading.Event]:
    wake = threading.Event()
    return InFlight(wake, LOG, limits), wake


def test_without_limits_there_is_no_room_per_queue() -> None:
    inflight = InFlight(threading.Event(), LOG)
    assert inflight.rooms() is None
    assert not inflight.limited


def test_a_queue_s_room_is_its_limit_less_its_jobs_held_until_their_handlers_return() -> None:
    inflight, _ = limited(slow=2, fast=3)
    assert inflight.rooms() == {"slow": 2, "fast": 3}
    slow = inflight.add([job("slow"), job("slow")], REGISTRY)
    fast = inflight.add([job("fast")], REGISTRY)
    assert inflight.rooms() == {"slow": 0, "fast": 2}
    # A handler that returned gives its place back at once, before its outcome is written.
    inflight.begin(fast[0], 30)
    inflight.complete_later(fast[0])
    assert inflight.rooms() == {"slow": 0, "fast": 3}
    inflight.finished([Outcome(fast[0].job, 1.0)], [])
    assert inflight.rooms() == {"slow": 0, "fast": 3}
    # A job given up without running (its task failed, its lease will expire) frees its place.
    inflight.finished([], [Outcome(slow[0].job, 0.0)])
    assert inflight.rooms() == {"slow": 1, "fast": 3}
    inflight.take_unstarted()
    assert inflight.rooms() == {"slow": 2, "fast": 3}


def test_a_full_queue_with_room_again_wakes_the_producer() -> None:
    inflight, wake = limited(slow=1, fast=5)
    [fast] = inflight.add([job("fast")], REGISTRY)
    inflight.begin(fast, 30)
    inflight.complete_later(fast)
    assert not wake.is_set()  # fast was not full: nothing was left out of a claim for it
    [slow] = inflight.add([job("slow")], REGISTRY)
    inflight.begin(slow, 30)
    inflight.complete_later(slow)
    assert wake.is_set()
    assert inflight.space.is_set()


def test_a_handler_stuck_past_its_timeout_keeps_its_place_until_its_thread_returns() -> None:
    inflight, _ = limited(slow=1)
    [stuck] = inflight.add([job("slow")], REGISTRY)
    inflight.begin(stuck, 0.01)
    expired, _ = inflight.expire(time.monotonic() + 1)
    assert expired == [stuck]
    inflight.finished([Outcome(stuck.job, 10.0)], [])  # its failure is written
    assert inflight.rooms() == {"slow": 0}  # but the handler still runs in its thread
    assert inflight.returned(stuck)
    assert inflight.rooms() == {"slow": 1}


def test_a_broken_group_s_hung_handler_keeps_its_place_until_its_thread_returns() -> None:
    inflight, _ = limited(slow=3)
    members = inflight.add([job("slow"), job("slow")], REGISTRY)
    group = Group(members)
    for member in members:
        member.group = group
        inflight.begin(member, None)
    inflight.enter_group(group, 42)
    inflight.time_handler(group, members[0], 0.01)
    inflight.expire(time.monotonic() + 1)
    inflight.finished([Outcome(members[0].job, 10.0)], [])  # the hung one's failure
    assert inflight.rooms() == {"slow": 1}  # the hung thread, and the neighbour to rerun
    assert inflight.regroup(group) == [members[1]]
    assert inflight.leave_group(group)  # its transaction ended: broken, nothing committed
    inflight.broken_group_left(group)
    assert inflight.rooms() == {"slow": 2}


def test_jobs_of_a_queue_without_a_limit_here_are_held_but_not_counted() -> None:
    inflight, _ = limited(slow=1)
    inflight.add([job("elsewhere")], REGISTRY)
    assert inflight.rooms() == {"slow": 1}
    assert inflight.busy(claim=10) == 1


# -- the relay process ---------------------------------------------------------------------


def test_a_relay_with_limits_runs_their_sum_of_threads_on_their_queues() -> None:
    settings = outbox.Settings(dsn="postgresql://unused/none", concurrency=16)
    worker = Worker(REGISTRY, "postgresql://unused/none", settings, queue_limits={"a": 2, "b": 3})
    try:
        assert worker.queues == ["a", "b"]
        assert worker.concurrency == worker.settings.concurrency == 5
        assert worker.inflight.rooms() == {"a": 2, "b": 3}
    finally:
        worker.dispatcher.shutdown()
        worker.engine.dispose()
        worker.fast.dispose()


def test_a_relay_refuses_queues_that_its_limits_do_not_name() -> None:
    settings = outbox.Settings(dsn="postgresql://unused/none")
    with pytest.raises(ValueError, match="queues and queue_limits name different queues"):
        Worker(REGISTRY, "postgresql://unused/none", settings, queues=["a"], queue_limits={"b": 1})
