"""The relay's JSON (outbox/fastjson.py): orjson's speed, the standard library's results."""

from __future__ import annotations

import json

import pytest

from outbox import fastjson

DOCUMENT = {"transfer_id": 12345, "amount": "10.50", "price": 1.5, "name": "Zoë ✓",
            "lines": [1, None, True, {"nested": []}], "line\nbreak": "tab\there"}  # fmt: skip


@pytest.mark.parametrize("form", [bytes, bytearray, memoryview, lambda b: b.decode()])
def test_a_document_reads_as_the_standard_library_reads_it(form: object) -> None:
    text = json.dumps(DOCUMENT).encode()
    assert fastjson.loads(form(text)) == json.loads(text)  # type: ignore[operator]


@pytest.mark.parametrize("form", [bytes, memoryview, lambda b: b.decode()])
def test_integers_beyond_64_bits_are_read_exactly(form: object) -> None:
    """jsonb keeps numbers as numeric: an integer that orjson would read as a float (beyond
    its 64 bits) is read as the int it is. Odd ones: an even 2**70 equals its float."""
    text = (
        b'{"big": 1180591620717411303425, "small": -9223372036854775809,'
        b' "in": "a 19-digit run 1234567890123456789 in a string", "n": 18446744073709551615}'
    )
    read = fastjson.loads(form(text))  # type: ignore[operator]
    assert read == {
        "big": 2**70 + 1, "small": -(2**63) - 1,
        "in": "a 19-digit run 1234567890123456789 in a string", "n": 2**64 - 1,
    }  # fmt: skip
    assert all(type(read[k]) is int for k in ("big", "small", "n"))


def test_a_document_is_written_compact_in_utf8_as_the_standard_library_writes_it() -> None:
    expected = json.dumps(DOCUMENT, separators=(",", ":"), ensure_ascii=False).encode()
    assert fastjson.dumps(DOCUMENT) == expected


def test_integers_beyond_64_bits_are_written_exactly() -> None:
    assert fastjson.dumps({"big": 2**70 + 1, "n": [1, -(2**64)]}) == (
        b'{"big":1180591620717411303425,"n":[1,-18446744073709551616]}'
    )


def test_what_orjson_refuses_and_json_reads_is_read() -> None:
    assert fastjson.loads(b'{"s": "\\ud800"}') == {"s": "\ud800"}


def test_what_is_not_json_is_refused_as_the_standard_library_refuses_it() -> None:
    with pytest.raises(ValueError, match="Expecting value"):
        fastjson.loads(b'{"a": }')
    with pytest.raises(TypeError, match="not JSON serializable"):
        fastjson.dumps({"when": object()})
