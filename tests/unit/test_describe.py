"""G6 keeps every error: describe() turns any exception into what history stores, and never
raises itself, whatever the exception does when it is printed."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

import pytest
from outbox_relay import execute
from outbox_relay.execute import TRACEBACK_LIMIT, describe

from outbox import Job, Registry, RegistryError
from outbox.registry import error_frames, redact_messages


def raised(exc: BaseException) -> BaseException:
    """``exc`` with a traceback, as a handler would have raised it."""
    try:
        raise exc
    except BaseException as caught:
        return caught


class BrokenStr(Exception):
    def __str__(self) -> str:
        raise ValueError("no str for you")


class BrokenStrAndRepr(Exception):
    def __str__(self) -> str:
        raise ValueError("no str for you")

    def __repr__(self) -> str:
        raise RuntimeError("no repr either")


class StrNotText(Exception):
    def __str__(self) -> Any:
        return 42


class StrRaisesBaseException(Exception):
    def __str__(self) -> str:
        raise KeyboardInterrupt


class Halt(BaseException):
    """A BaseException of an application's own."""


def storable(error: dict[str, Any]) -> bool:
    """What jsonb accepts: no NUL, and text that is valid Unicode (no lone surrogate)."""
    text = json.dumps(error, ensure_ascii=False)
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return "\\u0000" not in text


def test_an_exception_is_kept_with_its_type_message_and_traceback() -> None:
    error = describe(raised(ValueError("invalid amount")))
    assert error["type"] == "builtins.ValueError"
    assert error["message"] == "invalid amount"
    assert "Traceback" in error["traceback"]
    assert "ValueError: invalid amount" in error["traceback"]


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (KeyboardInterrupt(), "builtins.KeyboardInterrupt"),
        (SystemExit(3), "builtins.SystemExit"),
        (Halt("stop the line"), f"{__name__}.Halt"),
        (GeneratorExit(), "builtins.GeneratorExit"),
    ],
)
def test_a_base_exception_is_kept_with_its_type(exc: BaseException, kind: str) -> None:
    error = describe(raised(exc))
    assert error["type"] == kind
    assert error["message"]
    assert error["traceback"]


def test_an_exception_without_a_message_is_named_by_its_type() -> None:
    assert describe(raised(KeyboardInterrupt()))["message"] == "KeyboardInterrupt"
    assert describe(raised(RuntimeError()))["message"] == "RuntimeError"


@pytest.mark.parametrize(
    ("exc", "shown"),
    [
        (BrokenStr("card declined"), "BrokenStr('card declined') (its str() raised ValueError)"),
        (StrNotText(), "StrNotText() (its str() raised TypeError)"),
        (StrRaisesBaseException(), "StrRaisesBaseException() (its str() raised KeyboardInterrupt)"),
    ],
)
def test_an_exception_whose_str_raises_is_kept_through_its_repr(
    exc: BaseException, shown: str
) -> None:
    error = describe(raised(exc))
    assert error["type"] == f"{__name__}.{type(exc).__qualname__}"
    assert error["message"] == shown
    assert type(exc).__qualname__ in error["traceback"]


def test_an_exception_that_cannot_be_printed_is_kept_by_its_type() -> None:
    error = describe(raised(BrokenStrAndRepr("x")))
    assert error["type"] == f"{__name__}.BrokenStrAndRepr"
    assert error["message"] == "BrokenStrAndRepr (cannot be printed: its str() and repr() raise)"
    assert "BrokenStrAndRepr" in error["traceback"]


def test_a_cause_that_cannot_be_printed_does_not_hide_the_error() -> None:
    try:
        try:
            raise BrokenStrAndRepr()
        except BrokenStrAndRepr as inner:
            raise RuntimeError("capture failed") from inner
    except RuntimeError as exc:
        error = describe(exc)
    assert error["message"] == "capture failed"
    assert "BrokenStrAndRepr" in error["traceback"]


def test_a_huge_message_is_cut_and_the_traceback_keeps_its_frames() -> None:
    error = describe(raised(ValueError("x" * 10_000_000)))
    assert error["message"] == "x" * execute.MESSAGE_LIMIT
    assert len(error["traceback"]) <= TRACEBACK_LIMIT + 100
    assert error["traceback"].startswith("Traceback (most recent call last):")
    assert "in raised" in error["traceback"]
    assert "characters cut" in error["traceback"]
    assert error["traceback"].rstrip().endswith("x")


def test_a_deep_chain_of_causes_is_bounded() -> None:
    exc: BaseException = ValueError("root")
    for n in range(2000):
        try:
            raise RuntimeError(f"level {n}") from exc
        except RuntimeError as caught:
            exc = caught
    error = describe(exc)
    assert error["message"] == "level 1999"
    assert len(error["traceback"]) <= TRACEBACK_LIMIT + 100
    assert error["traceback"].rstrip().endswith("RuntimeError: level 1999")


@pytest.mark.parametrize(
    "message", ["a\x00b", "lone \ud800 surrogate", "\udcff\x00", "ok \x1b[31m\x9b\u2028 kept"]
)
def test_a_message_is_made_storable_and_keeps_what_can_be_stored(message: str) -> None:
    error = describe(raised(ValueError(message)))
    assert storable(error)
    if "\x00" not in message and not any("\ud800" <= c <= "\udfff" for c in message):
        assert error["message"] == message


def test_a_nul_or_a_lone_surrogate_is_kept_as_its_escape() -> None:
    error = describe(raised(ValueError("a\x00b\ud800c")))
    assert error["message"] == "a\\x00b\\ud800c"
    assert "ValueError: a\\x00b\\ud800c" in error["traceback"]


# -- redaction: what a registry's redact_error hook keeps ------------------------------------

CARD = "4111-2222-3333-4444"


def card_job() -> Job:
    return Job(
        uuid=uuid4(), type="card.parse", queue="default", key=None, payload={"card": CARD},
        attempt=1, max_attempts=3, enqueued_at=datetime.now(UTC), idempotency_key="k",
    )  # fmt: skip


def parse_card(job: Job) -> None:
    try:
        int(job.payload["card"])
    except ValueError as exc:
        raise RuntimeError(f"card {job.payload['card']} unreadable") from exc


def failed_with(registry: Registry, func: Any) -> dict[str, Any]:
    handler = registry.register("card.parse", func)
    outcome = execute.run(handler, card_job())
    assert outcome.error is not None
    return outcome.error


def test_without_a_hook_the_error_is_kept_as_raised() -> None:
    error = failed_with(Registry(), parse_card)
    assert error["message"] == f"card {CARD} unreadable"
    assert f"invalid literal for int() with base 10: '{CARD}'" in error["traceback"]


def test_redact_messages_keeps_types_and_frames_and_no_message() -> None:
    error = failed_with(Registry(redact_error=redact_messages), parse_card)
    assert CARD not in json.dumps(error)
    assert error["type"] == "builtins.RuntimeError"
    assert error["message"] == "RuntimeError (from ValueError): message redacted"
    frames = error["traceback"]
    assert 'in parse_card\n    int(job.payload["card"])' in frames
    assert "ValueError (message redacted)" in frames
    assert "direct cause of the following exception" in frames
    assert frames.endswith("RuntimeError (message redacted)\n")


def test_error_frames_of_an_exception_group_show_each_sub_exception() -> None:
    try:
        raise ExceptionGroup("two", [ValueError(CARD), KeyError(CARD)])
    except ExceptionGroup as exc:
        frames = error_frames(exc)
    assert CARD not in frames
    assert "ExceptionGroup (message redacted)" in frames
    assert "| ValueError (message redacted)" in frames
    assert "| KeyError (message redacted)" in frames


def test_error_frames_of_a_cyclic_chain_ends() -> None:
    first, second = ValueError(CARD), ValueError(CARD)
    first.__context__, second.__context__ = second, first
    assert error_frames(first).count("ValueError (message redacted)") == 2


def test_a_hook_may_keep_what_it_chooses() -> None:
    def mask(job: Job, exc: BaseException, error: Mapping[str, Any]) -> dict[str, Any]:
        return {k: error[k].replace(job.payload["card"], "****") for k in ("message", "traceback")}

    error = failed_with(Registry(redact_error=mask), parse_card)
    assert error["message"] == "card **** unreadable"
    assert "invalid literal for int() with base 10: '****'" in error["traceback"]
    assert error["type"] == "builtins.RuntimeError"


def test_what_a_hook_keeps_is_made_storable_and_bounded() -> None:
    def verbose(job: Job, exc: BaseException, error: Mapping[str, Any]) -> dict[str, Any]:
        return {"message": "a\x00" * 5000, "traceback": "\ud800" * 50_000}

    error = failed_with(Registry(redact_error=verbose), parse_card)
    assert storable(error)
    assert len(error["message"]) == execute.MESSAGE_LIMIT
    assert len(error["traceback"]) <= TRACEBACK_LIMIT + 100


@pytest.mark.parametrize(
    "returned", [None, {"message": None, "traceback": None}, {"message": "m"}, "text"]
)
def test_a_hook_that_fails_or_returns_nonsense_keeps_no_message(returned: object) -> None:
    def odd(job: Job, exc: BaseException, error: Mapping[str, Any]) -> Any:
        return returned

    def raising(job: Job, exc: BaseException, error: Mapping[str, Any]) -> Any:
        raise KeyboardInterrupt

    for hook in (odd, raising):
        error = failed_with(Registry(redact_error=hook), parse_card)
        assert CARD not in json.dumps(error)
        assert error["message"].startswith("RuntimeError (from ValueError): message redacted")
        assert "(the redact_error hook raised" in error["message"]
        assert "in parse_card" in error["traceback"]


def test_redact_error_must_be_callable() -> None:
    with pytest.raises(RegistryError, match="redact_error must be callable"):
        Registry(redact_error="messages")  # type: ignore[arg-type]


def test_a_registry_passes_its_hook_to_every_handler() -> None:
    registry = Registry(redact_error=redact_messages)
    handler = registry.register("a.b", lambda job: None)
    assert registry.redact_error is redact_messages
    assert handler.redact_error is redact_messages
    assert Registry().register("a.b", lambda job: None).redact_error is None


def deadlocked(job: Job) -> None:
    """As a session handler meets a deadlock: the driver's error, wrapped by SQLAlchemy."""
    import psycopg.errors
    import sqlalchemy.exc

    orig = psycopg.errors.DeadlockDetected("deadlock detected")
    raise sqlalchemy.exc.OperationalError("UPDATE ledger ...", {}, orig)


@pytest.mark.parametrize("hook", [None, redact_messages], ids=["kept", "redacted"])
def test_a_deadlock_is_known_as_transient_by_its_code_even_when_its_message_is_redacted(
    hook: Any,
) -> None:
    handler = Registry(redact_error=hook).register("card.parse", deadlocked)
    outcome = execute.run(handler, card_job())
    assert outcome.transient  # the session group runs it again alone (relay/complete.py)
    assert not execute.run(Registry().register("card.parse", parse_card), card_job()).transient


def test_a_delivery_note_postgresql_cannot_store_is_kept_escaped() -> None:
    """A target's answer is kept in history: a NUL or a lone surrogate in it would have made
    PostgreSQL refuse the completion (a custom target may return any text)."""
    from outbox.publish.target import Delivery

    registry = Registry()
    handler = registry.register("a.b", lambda job: Delivery("delivered", "seq \x00 \ud800"))
    made = Job(
        uuid=uuid4(), type="a.b", queue="default", key=None, payload={}, attempt=1,
        max_attempts=3, enqueued_at=datetime.now(UTC), idempotency_key="k",
    )  # fmt: skip
    outcome = execute.run(handler, made)
    assert outcome.succeeded
    assert outcome.note == "delivered: seq \\x00 \\ud800"
    assert (
        execute.run_batch(
            dataclasses.replace(handler, batch=lambda jobs: [Delivery("delivered", "\x00")]), [made]
        )[0].note
        == "delivered: \\x00"
    )
