"""Handlers by job type: options checked when registered, not when the first job fails."""

from __future__ import annotations

import functools
import math
import re
from typing import Any

import pytest
import tenacity

import outbox
from outbox import DuplicateHandler, Handler, Job, Registry, RegistryError
from outbox.registry import DEFAULT_RETRY


def handle(job: Job) -> None:
    """A handler that takes the job only."""


def handle_in_session(job: Job, session: Any) -> None:
    """A handler that also takes the session of the transaction that completes its job."""


def test_decorator_registers_the_function_and_returns_it_unchanged() -> None:
    registry = Registry()

    @registry.handler("mail.send")
    def send(job: Job) -> None: ...

    assert registry["mail.send"].func is send
    assert registry["mail.send"].type == "mail.send"


def test_handler_without_options_leaves_them_to_the_relay() -> None:
    handler = Registry().register("mail.send", handle)
    assert handler.queue is None
    assert handler.max_attempts is None
    assert handler.timeout is None
    assert handler.retry is DEFAULT_RETRY


def test_options_given_are_kept() -> None:
    wait = tenacity.wait_fixed(3)
    handler = Registry().register(
        "mail.send", handle, queue="mail", max_attempts=7, timeout=2, retry=wait
    )
    assert (handler.queue, handler.max_attempts, handler.retry) == ("mail", 7, wait)
    assert handler.timeout == 2.0
    assert isinstance(handler.timeout, float)


def test_handler_of_job_alone_takes_no_session() -> None:
    assert Registry().register("t", handle).takes_session is False


def test_handler_of_job_and_session_takes_the_session() -> None:
    assert Registry().register("t", handle_in_session).takes_session is True


def test_handler_whose_session_parameter_has_a_default_takes_no_session() -> None:
    def optional(job: Job, session: Any = None) -> None: ...

    assert Registry().register("t", optional).takes_session is False


def test_handler_with_extra_optional_parameters_is_accepted() -> None:
    def extra(job: Job, session: Any, verbose: bool = False, **options: Any) -> None: ...

    assert Registry().register("t", extra).takes_session is True


def test_bound_method_and_callable_object_are_handlers() -> None:
    class Mailer:
        def send(self, job: Job, session: Any) -> None: ...

        def __call__(self, job: Job) -> None: ...

    registry = Registry()
    assert registry.register("bound", Mailer().send).takes_session is True
    assert registry.register("callable", Mailer()).takes_session is False
    assert registry.register("partial", functools.partial(handle_in_session)).takes_session


def test_async_handler_is_marked_async() -> None:
    async def send(job: Job, session: Any) -> None: ...

    handler = Registry().register("t", send)
    assert handler.is_async is True
    assert handler.takes_session is True


def test_sync_handler_is_not_marked_async() -> None:
    assert Registry().register("t", handle).is_async is False


def test_second_handler_for_a_type_is_refused_naming_the_first() -> None:
    registry = Registry()

    @registry.handler("mail.send")
    def first(job: Job) -> None: ...

    existing = re.escape(f"({first.__module__}.{first.__qualname__})")
    with pytest.raises(
        DuplicateHandler,
        match=rf"job type 'mail\.send' already has a handler {existing}; each type has exactly one",
    ):

        @registry.handler("mail.send")
        def second(job: Job) -> None: ...

    assert registry["mail.send"].func is first


def test_duplicate_handler_is_a_registry_error() -> None:
    registry = Registry()
    registry.register("t", handle)
    with pytest.raises(RegistryError):
        registry.register("t", handle)


@pytest.mark.parametrize(
    ("type", "reason"),
    [
        ("", "job type must not be empty"),
        ("has space", "job type 'has space' may hold only"),
        ("t" * 129, "at most 128"),
        (5, "job type must be a str, not int"),
    ],
)
def test_bad_type_name_is_refused(type: Any, reason: str) -> None:
    with pytest.raises(RegistryError, match=f"^handler for {re.escape(repr(type))}: .*{reason}"):
        Registry().register(type, handle)


@pytest.mark.parametrize(
    ("queue", "reason"),
    [("", "must not be empty"), ("a:b", "may hold only"), ("q" * 65, "at most 64"), (3, "not int")],
)
def test_bad_queue_is_refused(queue: Any, reason: str) -> None:
    with pytest.raises(RegistryError, match=f"^handler for 't': job queue .*{reason}"):
        Registry().register("t", handle, queue=queue)


@pytest.mark.parametrize(
    ("attempts", "reason"),
    [
        (0, "must be between 1 and 1000, not 0"),
        (1001, "must be between 1 and 1000, not 1001"),
        (True, "must be an int or None, not bool"),
        (2.5, "must be an int or None, not float"),
    ],
)
def test_bad_max_attempts_is_refused(attempts: Any, reason: str) -> None:
    with pytest.raises(RegistryError, match=f"^handler for 't': max_attempts {reason}"):
        Registry().register("t", handle, max_attempts=attempts)


@pytest.mark.parametrize("timeout", [0, -1, -0.5, True, False, math.nan, math.inf, "5"])
def test_timeout_that_is_not_positive_seconds_is_refused(timeout: Any) -> None:
    with pytest.raises(RegistryError, match=r"^handler for 't': timeout must be positive seconds$"):
        Registry().register("t", handle, timeout=timeout)


@pytest.mark.parametrize(
    "retry", [5, "exponential", lambda state: 3.0, tenacity.stop_after_attempt(3)]
)
def test_retry_that_is_not_a_tenacity_wait_strategy_is_refused_with_an_example(retry: Any) -> None:
    with pytest.raises(
        RegistryError,
        match=r"retry must be a tenacity wait strategy, e\.g\. tenacity\.wait_exponential_jitter",
    ):
        Registry().register("t", handle, retry=retry)


def _none() -> None: ...


def _three(job: Job, session: Any, extra: Any) -> None: ...


def _star(*args: Any) -> None: ...


def _job_and_star(job: Job, *args: Any) -> None: ...


@pytest.mark.parametrize(
    ("func", "shown"),
    [
        (_none, r"\(\)"),
        (_three, r"\(job, session, extra\)"),
        (_star, r"\(args\)"),
        (_job_and_star, r"\(job, args\)"),
    ],
)
def test_handler_with_a_signature_other_than_job_or_job_session_is_refused(
    func: Any, shown: str
) -> None:
    with pytest.raises(
        RegistryError,
        match=rf"^handler for 't' must take \(job\) or \(job, session\), not {shown}$",
    ):
        Registry().register("t", func)


def test_handler_that_is_not_callable_is_refused() -> None:
    with pytest.raises(RegistryError, match=r"^handler for 't' must be callable, not 'send'$"):
        Registry().register("t", "send")


def test_handler_with_a_required_keyword_only_parameter_is_refused() -> None:
    def needs_flag(job: Job, *, flag: bool) -> None: ...

    with pytest.raises(RegistryError, match="must take"):
        Registry().register("t", needs_flag)


def test_refused_handler_is_not_registered() -> None:
    registry = Registry()
    with pytest.raises(RegistryError):
        registry.register("t", _three)
    assert "t" not in registry
    assert len(registry) == 0


# -- backoff -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("attempt", "low"), [(1, 1), (3, 4), (6, 32), (10, 512), (12, 2048)])
def test_default_backoff_doubles_with_each_attempt_plus_up_to_5s_of_jitter(
    attempt: int, low: float
) -> None:
    handler = Registry().register("t", handle)
    for _ in range(20):
        assert low <= handler.backoff(attempt) <= low + 5


def test_default_backoff_grows_with_attempt() -> None:
    handler = Registry().register("t", handle)
    waits = [handler.backoff(attempt) for attempt in (1, 4, 7, 10)]
    assert waits == sorted(waits)
    assert waits[0] <= 1 + 5 < 512 <= waits[-1]


@pytest.mark.parametrize("attempt", [13, 20, 100, 10_000])
def test_default_backoff_is_capped_at_an_hour(attempt: int) -> None:
    handler = Registry().register("t", handle)
    assert 3600 <= handler.backoff(attempt) <= 3600 + 5


def test_default_backoff_jitters_so_that_jobs_failing_together_spread_out() -> None:
    handler = Registry().register("t", handle)
    assert len({handler.backoff(3) for _ in range(20)}) > 1


@pytest.mark.parametrize("attempt", [1, 2, 50])
def test_custom_fixed_wait_is_used_as_given(attempt: int) -> None:
    handler = Registry().register("t", handle, retry=tenacity.wait_fixed(3))
    assert handler.backoff(attempt) == 3.0


def test_backoff_is_never_negative() -> None:
    handler = Registry().register("t", handle, retry=tenacity.wait_fixed(-5))
    assert handler.backoff(1) == 0.0


# -- lookups ---------------------------------------------------------------------------------------


def test_queues_lists_each_queue_once_with_the_default_standing_in() -> None:
    registry = Registry()
    registry.register("a", handle, queue="mail")
    registry.register("b", handle)
    registry.register("c", handle, queue="billing")
    registry.register("d", handle, queue="mail")
    assert registry.queues("default") == ["billing", "default", "mail"]
    assert registry.queues("mail") == ["billing", "mail"]


def test_empty_registry_has_no_queues() -> None:
    assert Registry().queues("default") == []


def test_lookups_find_registered_handlers_only() -> None:
    registry = Registry()
    first = registry.register("a", handle)
    second = registry.register("b", handle_in_session)
    assert registry.get("a") is first
    assert registry.get("missing") is None
    assert registry["b"] is second
    with pytest.raises(KeyError):
        registry["missing"]
    assert "a" in registry
    assert "missing" not in registry
    assert 5 not in registry
    assert len(registry) == 2
    assert list(registry) == [first, second]
    assert all(isinstance(h, Handler) for h in registry)


def test_registry_is_lenient_unless_made_strict() -> None:
    assert Registry().strict is False
    assert Registry(strict=True).strict is True


def test_the_decorator_without_its_job_type_is_refused() -> None:
    """@registry.handler with no parentheses registered nothing and replaced the function
    with a closure: its jobs then waited for a handler that never came."""
    registry = outbox.Registry()
    with pytest.raises(outbox.RegistryError, match=r'^use @registry.handler\("job.type"\)'):

        @registry.handler  # type: ignore[arg-type]
        def charge(job: outbox.Job) -> None: ...


def test_a_strict_that_is_not_a_bool_is_refused() -> None:
    with pytest.raises(outbox.RegistryError, match=r"^strict must be True or False, not 'no'"):
        outbox.Registry(strict="no")  # type: ignore[arg-type]


def test_a_destination_given_a_target_class_instead_of_a_target_is_refused() -> None:
    from outbox.publish import Webhook

    with pytest.raises(outbox.RegistryError, match="is a class; give a target built from it"):
        outbox.Registry().destination("orders", Webhook)  # type: ignore[arg-type]


class _BatchTarget:
    """A target that publishes in batches, of ``batch_size`` messages a call where given."""

    extra = "none"

    def __init__(self, **size: object) -> None:
        self.__dict__.update(size)

    def start(self, limits: object) -> None: ...

    def publish(self, message: object) -> object: ...

    def publish_many(self, messages: list[object]) -> list[object]:
        return []

    def close(self) -> None: ...


def test_a_batch_target_takes_its_own_batch_size_or_the_default() -> None:
    from outbox.publish.target import BATCH

    registry = outbox.Registry()
    assert registry.destination("a", _BatchTarget()).batch_size == BATCH  # type: ignore[arg-type]
    sized = registry.destination("b", _BatchTarget(batch_size=7))  # type: ignore[arg-type]
    assert sized.batch_size == 7
    assert sized.batch is not None


def test_the_brokers_take_a_claims_messages_in_one_call_and_webhooks_a_hundred() -> None:
    from outbox.publish import Kafka, NatsJetStream, RabbitMQ, Webhook
    from outbox.publish.target import CLAIM_SIZED

    registry = outbox.Registry()
    targets = {
        "rabbit": RabbitMQ("amqp://guest:guest@127.0.0.1:5672/", routing_key="q"),
        "nats": NatsJetStream("nats://127.0.0.1:4222", "orders"),
        "kafka": Kafka("127.0.0.1:9092", topic="orders"),
        "hooks": Webhook("https://example.com/hook", secret="whsec_" + "MTIzNDU2Nzg5MDEyMzQ1Ng=="),
    }
    sizes = {name: registry.destination(name, t).batch_size for name, t in targets.items()}
    assert sizes == {"rabbit": CLAIM_SIZED, "nats": CLAIM_SIZED, "kafka": CLAIM_SIZED,
                     "hooks": 100}  # fmt: skip
    assert CLAIM_SIZED == 500  # a claim's most jobs (OUTBOX_CLAIM_BATCH's default)


@pytest.mark.parametrize("size", [0, -1, "500", True, 2.5, None])
def test_a_batch_size_that_is_not_a_positive_int_is_refused_naming_the_destination(
    size: object,
) -> None:
    registry = outbox.Registry()
    with pytest.raises(RegistryError, match=r"^destination 'orders': .* has batch_size "):
        registry.destination("orders", _BatchTarget(batch_size=size))  # type: ignore[arg-type]
    assert "orders" not in registry.destinations
    assert registry.get("publish:orders") is None
