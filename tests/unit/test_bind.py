"""enqueue's checks before any statement is sent (G8): a batch becomes checked columns,
or the whole batch is refused, saying which job was wrong and why."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from outbox import (
    InvalidJob,
    NewJob,
    PayloadNotJSON,
    PayloadTooLarge,
    Registry,
    Settings,
    UnknownJobType,
)
from outbox.bulk import Columns
from outbox.enqueue import _bind

SETTINGS = Settings(default_queue="fallback")


def bind(jobs: list[Any], registry: Registry | None = None) -> Columns:
    return _bind(jobs, registry, SETTINGS)


def handle(job: Any) -> None: ...


def test_batch_becomes_one_column_per_option_in_batch_order() -> None:
    when = datetime(2030, 1, 1, tzinfo=UTC)
    payloads = [{"n": 1}, {"n": 2}, {"n": 3}]
    columns = bind(
        [
            NewJob("mail.send", payloads[0]),
            NewJob("mail.send", payloads[1], key="k", idempotency_key="i", priority=5),
            NewJob("bill", payloads[2], queue="billing", run_at=when, max_attempts=3, priority=100),
        ]
    )
    assert isinstance(columns, Columns)
    assert columns.type == ["mail.send", "mail.send", "bill"]
    assert columns.queue == ["fallback", "fallback", "billing"]
    assert columns.key == [None, "k", None]
    assert columns.idempotency_key == [None, "i", None]
    assert columns.priority == [0, 5, 100]
    assert columns.run_at == [None, None, when]
    assert columns.delay == [None, None, None]
    assert columns.max_attempts == [None, None, 3]
    assert columns.payload == payloads


def test_payloads_are_kept_unencoded_for_the_path_that_sends_them() -> None:
    payload = {"n": 1}
    columns = bind([NewJob("t", payload)])
    assert columns.payload[0] is payload
    assert columns.encoded(0, 100) == '{"n":1}'


def test_each_job_gets_a_fresh_increasing_uuid7() -> None:
    columns = bind([NewJob("t", {}) for _ in range(50)])
    assert len(set(columns.uuid)) == 50
    assert columns.uuid == sorted(columns.uuid)
    assert all(u.version == 7 for u in columns.uuid)


@pytest.mark.parametrize(
    ("delay", "expected"),
    [(30, timedelta(seconds=30)), (timedelta(hours=1), timedelta(hours=1)), (0, timedelta(0))],
)
def test_delay_becomes_a_timedelta(delay: Any, expected: timedelta) -> None:
    columns = bind([NewJob("t", {}, delay=delay)])
    assert columns.delay == [expected]
    assert columns.run_at == [None]


def test_empty_batch_gives_empty_columns() -> None:
    columns = bind([])
    assert columns.uuid == []
    assert columns.type == []


# -- refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "exception", "reason"),
    [
        ({"type": ""}, InvalidJob, "job type must not be empty"),
        ({"queue": "has space"}, InvalidJob, "job queue 'has space' may hold only"),
        ({"key": " "}, InvalidJob, "key must not be empty or blank"),
        ({"idempotency_key": "a\nb"}, InvalidJob, "idempotency_key 'a\\\\nb' contains a control"),
        ({"priority": 101}, InvalidJob, "priority 101 is out of range"),
        ({"priority": True}, InvalidJob, "priority must be an int, not bool"),
        ({"max_attempts": 0}, InvalidJob, "max_attempts must be between 1 and 1000, not 0"),
        ({"run_at": datetime(2030, 1, 1)}, InvalidJob, "run_at is a naive datetime"),
        ({"delay": -1}, InvalidJob, "delay must be zero or more seconds"),
        (
            {"run_at": datetime(2030, 1, 1, tzinfo=UTC), "delay": 1},
            InvalidJob,
            "give run_at or delay, not both",
        ),
    ],
)
def test_invalid_job_among_many_is_refused_saying_which_and_why(
    bad: dict[str, Any], exception: type[Exception], reason: str
) -> None:
    jobs = [NewJob("mail.send", {"n": i}) for i in range(5)]
    jobs[3] = NewJob(**{"type": "mail.send", "payload": {}, **bad})
    shown = repr(jobs[3].type).replace(".", r"\.")
    with pytest.raises(exception, match=f"^job 3 of 5 \\({shown}\\): {reason}"):
        bind(jobs)


def test_position_in_the_message_counts_from_zero_as_the_docs_show() -> None:
    jobs = [NewJob("t", {}) for _ in range(4)]
    jobs[0] = NewJob("t", {}, priority=-1)
    with pytest.raises(InvalidJob, match=r"^job 0 of 4 \('t'\): priority -1"):
        bind(jobs)


def test_first_invalid_job_is_the_one_reported() -> None:
    jobs = [NewJob("t", {}), NewJob("t", {}, key=""), NewJob("t", {}, priority=-1)]
    with pytest.raises(InvalidJob, match=r"^job 1 of 3 \('t'\): key must not be empty"):
        bind(jobs)


def test_single_job_refusal_has_no_position_prefix() -> None:
    with pytest.raises(InvalidJob, match=r"^priority 101 is out of range"):
        bind([NewJob("t", {}, priority=101)])


@pytest.mark.parametrize(
    ("item", "kind"),
    [({"type": "t", "payload": {}}, "dict"), (("t", {}), "tuple"), (None, "NoneType")],
)
def test_item_that_is_not_a_new_job_is_refused(item: Any, kind: str) -> None:
    with pytest.raises(
        InvalidJob, match=rf"^job 1 of 3 \('\?'\): enqueue_many takes NewJob items, not {kind}$"
    ):
        bind([NewJob("t", {}), item, NewJob("t", {})])


def test_subclass_of_new_job_is_refused() -> None:
    class MyJob(NewJob):
        pass

    with pytest.raises(InvalidJob, match="enqueue_many takes NewJob items, not MyJob"):
        bind([NewJob("t", {}), MyJob("t", {})])


def test_payload_refusal_names_the_job_of_the_batch() -> None:
    jobs = [NewJob("t", {"n": i}) for i in range(5)]
    jobs[3] = NewJob("bill", {"amount": Decimal("1.10")})
    columns = bind(jobs)
    assert columns.encoded(2, 100) == '{"n":2}'
    with pytest.raises(
        PayloadNotJSON, match=r"^job 3 of 5 \('bill'\): payload is not JSON: .*minor units"
    ):
        columns.encoded(3, 100)


def test_payload_size_refusal_names_the_job_of_the_batch() -> None:
    columns = bind([NewJob("t", {}), NewJob("t", {"s": "x" * 100})])
    with pytest.raises(
        PayloadTooLarge, match=r"^job 1 of 2 \('t'\): payload is 108 bytes of JSON; the limit is 50"
    ):
        columns.encoded(1, 50)


# -- registry and settings -------------------------------------------------------------------


def test_strict_registry_refuses_an_unknown_type_listing_the_known_ones() -> None:
    registry = Registry(strict=True)
    registry.register("mail.send", handle)
    registry.register("bill.charge", handle)
    with pytest.raises(
        UnknownJobType,
        match=r"^job 1 of 2 \('mail\.sned'\): no handler is registered for job type "
        r"'mail\.sned' \(known types: bill\.charge, mail\.send\); "
        "register one or fix the type name$",
    ):
        bind([NewJob("mail.send", {}), NewJob("mail.sned", {})], registry)


def test_strict_registry_without_handlers_says_it_knows_none() -> None:
    with pytest.raises(UnknownJobType, match=r"\(known types: none\)"):
        bind([NewJob("t", {})], Registry(strict=True))


def test_unknown_type_is_an_invalid_job() -> None:
    with pytest.raises(InvalidJob):
        bind([NewJob("t", {})], Registry(strict=True))


def test_lenient_registry_accepts_an_unknown_type() -> None:
    registry = Registry()
    registry.register("known", handle, queue="q")
    columns = bind([NewJob("unknown", {})], registry)
    assert columns.type == ["unknown"]
    assert columns.queue == ["fallback"]


def test_handler_supplies_queue_and_max_attempts_when_the_job_gives_none() -> None:
    registry = Registry(strict=True)
    registry.register("mail.send", handle, queue="mail", max_attempts=7)
    columns = bind([NewJob("mail.send", {})], registry)
    assert columns.queue == ["mail"]
    assert columns.max_attempts == [7]


def test_job_options_win_over_the_handlers() -> None:
    registry = Registry()
    registry.register("mail.send", handle, queue="mail", max_attempts=7)
    columns = bind(
        [
            NewJob("mail.send", {}, queue="urgent", max_attempts=2),
            NewJob("mail.send", {}),
            NewJob("mail.send", {}, max_attempts=1),
        ],
        registry,
    )
    assert columns.queue == ["urgent", "mail", "mail"]
    assert columns.max_attempts == [2, 7, 1]


def test_default_queue_applies_when_neither_job_nor_handler_names_one() -> None:
    registry = Registry()
    registry.register("mail.send", handle, max_attempts=4)
    columns = bind([NewJob("mail.send", {}), NewJob("other", {})], registry)
    assert columns.queue == ["fallback", "fallback"]
    assert columns.max_attempts == [4, None]


def test_without_registry_max_attempts_is_left_to_the_relay() -> None:
    assert bind([NewJob("t", {})]).max_attempts == [None]


# -- bugs: checks the batch path skips ----------------------------------------------------------


@pytest.mark.parametrize("priority", [False, 0.0])
def test_priority_equal_to_zero_but_not_an_int_is_refused(priority: Any) -> None:
    with pytest.raises(InvalidJob, match="priority must be an int"):
        bind([NewJob("t", {}, priority=priority)])


@pytest.mark.parametrize("queue", ["", 0, False])
def test_empty_or_false_queue_is_refused_not_replaced_by_the_default(queue: Any) -> None:
    with pytest.raises(InvalidJob, match="job queue must"):
        bind([NewJob("t", {}, queue=queue)])


@pytest.mark.parametrize(
    "options",
    [{"type": ["t"]}, {"queue": ["q"]}, {"max_attempts": [3]}],
    ids=["type", "queue", "max_attempts"],
)
def test_unhashable_option_is_refused_as_an_invalid_job(options: dict[str, Any]) -> None:
    job = NewJob(**{"type": "t", "payload": {}, **options})
    with pytest.raises(InvalidJob):
        bind([job])


@pytest.mark.parametrize("attempts", [True, 1.0])
def test_max_attempts_equal_to_an_earlier_valid_one_is_still_checked(attempts: Any) -> None:
    jobs = [NewJob("t", {}, max_attempts=1), NewJob("t", {}, max_attempts=attempts)]
    with pytest.raises(InvalidJob, match=r"^job 1 of 2 \('t'\): max_attempts must be an int"):
        bind(jobs)
