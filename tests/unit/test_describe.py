"""G6 keeps every error: describe() turns any exception into what history stores, and never
raises itself, whatever the exception does when it is printed."""

from __future__ import annotations

import json
from typing import Any

import pytest

from relay import execute
from relay.execute import TRACEBACK_LIMIT, describe


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
