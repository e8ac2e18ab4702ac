"""G8 at its source: every option a job can carry is refused early, with the reason."""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from decimal import Decimal
from types import MappingProxyType
from typing import Any
from uuid import uuid4

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from outbox import validate
from outbox.errors import InvalidJob, PayloadNotJSON, PayloadTooLarge

BIG = 10**9  # a payload limit no test payload reaches


def encode(payload: object) -> str:
    return validate.encode_payload(payload, BIG)


# -- job type and queue names ------------------------------------------------------------


@pytest.mark.parametrize("name", ["mail.send", "billing/invoice:v2", "a-b_c", "9lives", "t" * 128])
def test_job_type_accepts_letters_digits_and_separators(name: str) -> None:
    assert validate.job_type(name) == name


@pytest.mark.parametrize("name", ["default", "eu-west.1_fast", "Q", "q" * 64])
def test_queue_accepts_letters_digits_and_separators(name: str) -> None:
    assert validate.queue(name) == name


@pytest.mark.parametrize("check", [validate.job_type, validate.queue])
@pytest.mark.parametrize(
    ("value", "kind"), [(5, "int"), (None, "NoneType"), (b"mail", "bytes"), (["a"], "list")]
)
def test_name_that_is_not_str_is_refused_naming_its_type(
    check: Any, value: object, kind: str
) -> None:
    with pytest.raises(InvalidJob, match=rf"must be a str, not {kind}$"):
        check(value)


def test_empty_job_type_is_refused() -> None:
    with pytest.raises(InvalidJob, match="job type must not be empty"):
        validate.job_type("")


def test_empty_queue_is_refused() -> None:
    with pytest.raises(InvalidJob, match="job queue must not be empty"):
        validate.queue("")


def test_over_long_job_type_is_refused_with_its_length_and_the_limit() -> None:
    with pytest.raises(InvalidJob, match="is 129 characters; at most 128"):
        validate.job_type("t" * 129)


def test_over_long_queue_is_refused_with_its_length_and_the_limit() -> None:
    with pytest.raises(InvalidJob, match="is 65 characters; at most 64"):
        validate.queue("q" * 65)


@pytest.mark.parametrize(
    "name", ["mail send", "_private", "-x", ".x", "mail!", "a\n", "pöst", "a٣", "tab\there"]
)
def test_job_type_with_bad_characters_is_refused_listing_those_allowed(name: str) -> None:
    with pytest.raises(InvalidJob, match=r"may hold only letters, digits and _ \. : / -"):
        validate.job_type(name)


@pytest.mark.parametrize("name", ["a:b", "a/b", "has space", "_q", "q\n"])
def test_queue_with_bad_characters_is_refused_listing_those_allowed(name: str) -> None:
    with pytest.raises(InvalidJob, match=r"job queue .* may hold only letters, digits and _ \. -,"):
        validate.queue(name)


# -- keys -----------------------------------------------------------------------------------


def test_no_key_is_none() -> None:
    assert validate.key(None) is None


@pytest.mark.parametrize("value", ["order-42", "clé:é/ü 1", "k" * 255, "日本"])
def test_key_accepts_any_printable_text_up_to_255_characters(value: str) -> None:
    assert validate.key(value) == value


def test_key_that_is_not_str_is_refused() -> None:
    with pytest.raises(InvalidJob, match=r"^key must be a str or None, not int$"):
        validate.key(42)


def test_key_refusal_names_the_option_it_checks() -> None:
    with pytest.raises(InvalidJob, match=r"^idempotency_key must be a str or None, not bytes$"):
        validate.key(b"k", "idempotency_key")


@pytest.mark.parametrize("value", ["", "   ", "\t"])
def test_empty_or_blank_key_is_refused_suggesting_none(value: str) -> None:
    with pytest.raises(InvalidJob, match="must not be empty or blank; pass None for no key"):
        validate.key(value)


def test_over_long_key_is_refused_with_its_length() -> None:
    with pytest.raises(InvalidJob, match="is 256 characters; at most 255"):
        validate.key("k" * 256)


@pytest.mark.parametrize("value", ["a\nb", "a\x00b", "a\x7fb", "a\x1bb"])
def test_key_with_a_control_character_is_refused(value: str) -> None:
    with pytest.raises(InvalidJob, match="contains a control character"):
        validate.key(value)


def test_key_with_a_lone_surrogate_is_refused() -> None:
    with pytest.raises(InvalidJob, match="is not valid Unicode"):
        validate.key("a\ud800")


@pytest.mark.parametrize("value", ["a\x80b", "a\x85b", "a\x9bb", "\x9f", "k\x8d"])
def test_key_with_a_c1_control_character_is_refused(value: str) -> None:
    with pytest.raises(InvalidJob, match="contains a control character"):
        validate.key(value)


@pytest.mark.parametrize(
    "value",
    ["\u200b", "\ufeff", "\u200b\u200c\u200d", "\u2060", "\xa0", " \u200b ", "\u3000\u00ad"],
)
def test_key_of_only_invisible_characters_is_refused(value: str) -> None:
    with pytest.raises(InvalidJob, match="must not be empty or blank"):
        validate.key(value)
    with pytest.raises(InvalidJob, match="idempotency_key must not be empty or blank"):
        validate.key(value, "idempotency_key")


@pytest.mark.parametrize("value", ["a\u200bb", "\ufeffk", "k\xa0l", "\u00e9", "\u05d0\u200f"])
def test_key_with_visible_text_may_hold_format_characters(value: str) -> None:
    assert validate.key(value) == value


# -- priority and attempts ---------------------------------------------------------------


@pytest.mark.parametrize("value", [0, 1, 50, 100])
def test_priority_from_0_to_100_is_accepted(value: int) -> None:
    assert validate.priority(value) == value


@pytest.mark.parametrize(
    ("value", "kind"), [(True, "bool"), (False, "bool"), (1.0, "float"), ("5", "str")]
)
def test_priority_that_is_not_an_int_is_refused(value: object, kind: str) -> None:
    with pytest.raises(InvalidJob, match=f"^priority must be an int, not {kind}$"):
        validate.priority(value)


@pytest.mark.parametrize("value", [-1, 101, -1000, 10**6])
def test_priority_out_of_range_is_refused_with_the_range(value: int) -> None:
    with pytest.raises(InvalidJob, match=rf"priority {value} is out of range: use 0 .* to 100"):
        validate.priority(value)


@pytest.mark.parametrize("value", [None, 1, 25, 1000])
def test_max_attempts_from_1_to_1000_or_none_is_accepted(value: int | None) -> None:
    assert validate.max_attempts(value) == value


@pytest.mark.parametrize("value", [0, 1001, -5])
def test_max_attempts_out_of_range_is_refused_with_the_range(value: int) -> None:
    with pytest.raises(InvalidJob, match=f"max_attempts must be between 1 and 1000, not {value}"):
        validate.max_attempts(value)


@pytest.mark.parametrize(
    ("value", "kind"), [(True, "bool"), (False, "bool"), (3.0, "float"), ("3", "str")]
)
def test_max_attempts_that_is_not_an_int_is_refused(value: object, kind: str) -> None:
    with pytest.raises(InvalidJob, match=f"max_attempts must be an int or None, not {kind}"):
        validate.max_attempts(value)


# -- run_at and delay ---------------------------------------------------------------------


def test_no_schedule_means_once_committed() -> None:
    assert validate.schedule(None, None) == (None, None)


@pytest.mark.parametrize(
    "when",
    [datetime(2030, 1, 1, tzinfo=UTC), datetime(2030, 1, 1, tzinfo=timezone(timedelta(hours=-5)))],
)
def test_aware_run_at_is_kept_as_given(when: datetime) -> None:
    assert validate.schedule(when, None) == (when, None)


@pytest.mark.parametrize(
    "when",
    [
        datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-5))),  # year 10000 in UTC
        datetime(1, 1, 1, 1, tzinfo=timezone(timedelta(hours=5))),  # year 0 in UTC
        datetime.min.replace(tzinfo=UTC),  # year 0 to a connection west of Greenwich
        datetime.max.replace(tzinfo=UTC),  # year 10000 to one east of it
    ],
)
def test_run_at_at_the_ends_of_the_years_1_to_9999_is_refused(when: datetime) -> None:
    """PostgreSQL stores it, but a connection whose time zone moves it past year 9999 or
    before year 1 cannot read it back: the claim failed at every try, and job listings."""
    with pytest.raises(InvalidJob, match=f"^run_at {re.escape(when.isoformat())} is outside "):
        validate.schedule(when, None)


def test_run_at_a_day_inside_the_ends_is_kept() -> None:
    for when in (datetime(1, 1, 2, tzinfo=UTC), datetime(9999, 12, 30, 23, 59, tzinfo=UTC)):
        assert validate.schedule(when, None) == (when, None)


@pytest.mark.parametrize(
    ("delay", "expected"),
    [
        (0, timedelta(0)),
        (90, timedelta(seconds=90)),
        (1.5, timedelta(seconds=1.5)),
        (timedelta(minutes=5), timedelta(minutes=5)),
        (timedelta(0), timedelta(0)),
    ],
)
def test_delay_in_seconds_or_timedelta_becomes_a_timedelta(
    delay: object, expected: timedelta
) -> None:
    assert validate.schedule(None, delay) == (None, expected)


def test_run_at_and_delay_together_are_refused() -> None:
    with pytest.raises(InvalidJob, match="give run_at or delay, not both"):
        validate.schedule(datetime.now(UTC), 5)


def test_naive_run_at_is_refused_suggesting_a_time_zone() -> None:
    with pytest.raises(InvalidJob, match="run_at is a naive datetime; give it a time zone"):
        validate.schedule(datetime(2030, 1, 1), None)


class _NoOffset(tzinfo):
    """A time zone that does not know its offset: as naive as no time zone at all."""

    def utcoffset(self, dt: datetime | None) -> timedelta | None:
        return None


def test_run_at_whose_time_zone_has_no_offset_is_refused_as_naive() -> None:
    with pytest.raises(InvalidJob, match="naive datetime"):
        validate.schedule(datetime(2030, 1, 1, tzinfo=_NoOffset()), None)


@pytest.mark.parametrize(
    ("when", "kind"),
    [("2030-01-01T00:00:00Z", "str"), (date(2030, 1, 1), "date"), (1893456000, "int")],
)
def test_run_at_that_is_not_a_datetime_is_refused(when: object, kind: str) -> None:
    with pytest.raises(InvalidJob, match=f"run_at must be a datetime, not {kind}"):
        validate.schedule(when, None)


@pytest.mark.parametrize(
    "delay", [-1, -0.001, timedelta(seconds=-1), math.nan, math.inf, -math.inf]
)
def test_negative_or_non_finite_delay_is_refused(delay: object) -> None:
    with pytest.raises(InvalidJob, match="delay must be zero or more seconds, not "):
        validate.schedule(None, delay)


@pytest.mark.parametrize(
    ("delay", "kind"), [("5", "str"), (True, "bool"), (Decimal("5"), "Decimal"), ([5], "list")]
)
def test_delay_that_is_not_a_number_or_timedelta_is_refused(delay: object, kind: str) -> None:
    with pytest.raises(InvalidJob, match=f"delay must be a timedelta or seconds, not {kind}"):
        validate.schedule(None, delay)


@pytest.mark.parametrize("delay", [1e15, 10**400], ids=["1e15 seconds", "10**400 seconds"])
def test_delay_too_large_for_a_timedelta_is_refused_with_reason(delay: object) -> None:
    with pytest.raises(InvalidJob, match="delay"):
        validate.schedule(None, delay)


# -- payloads: shape ----------------------------------------------------------------------


def test_payload_is_encoded_as_compact_json() -> None:
    assert encode({"a": 1, "b": [1, 2.5, None, True], "c": {}}) == (
        '{"a":1,"b":[1,2.5,null,true],"c":{}}'
    )


def test_payload_text_keeps_non_ascii_characters_as_they_are() -> None:
    assert encode({"name": "Zoë 日本"}) == '{"name":"Zoë 日本"}'


def test_payload_may_be_any_mapping() -> None:
    assert encode(MappingProxyType({"a": 1})) == '{"a":1}'


@pytest.mark.parametrize(
    ("payload", "kind"), [([1, 2], "list"), ("{}", "str"), (None, "NoneType"), (5, "int")]
)
def test_payload_that_is_not_a_dict_is_refused(payload: object, kind: str) -> None:
    with pytest.raises(
        PayloadNotJSON, match=rf"payload must be a JSON object \(a dict with str keys\), not {kind}"
    ):
        encode(payload)


@pytest.mark.parametrize(
    ("payload", "shown"),
    [
        ({1: "a"}, "1 is an int"),
        ({"a": [{"b": {2: 3}}]}, "2 is an int"),
        ({"a": {"b": {None: 1}}}, "None is a NoneType"),
        ({True: 1}, "True is a bool"),
        ({"a": [[{1.5: "x"}]]}, "1.5 is a float"),
        ({"a": ({3: 4},)}, "3 is an int"),
    ],
)
def test_non_str_key_at_any_depth_is_refused(payload: dict[Any, Any], shown: str) -> None:
    with pytest.raises(PayloadNotJSON, match=f"payload key {shown}; JSON object keys must be str"):
        encode(payload)


def test_non_str_key_in_a_mapping_payload_is_refused() -> None:
    with pytest.raises(PayloadNotJSON, match="JSON object keys must be str"):
        encode(MappingProxyType({1: "a"}))


def test_key_the_encoder_cannot_write_at_all_is_refused() -> None:
    with pytest.raises(PayloadNotJSON, match="keys must be str"):
        encode({(1, 2): "pair"})


# -- payloads: values ----------------------------------------------------------------------


@pytest.mark.parametrize("payload", [{"a": math.nan}, {"a": [math.inf]}, {"a": {"b": -math.inf}}])
def test_nan_or_infinite_float_is_refused_with_reason(payload: dict[str, Any]) -> None:
    with pytest.raises(PayloadNotJSON, match="payload is not JSON: Out of range float values"):
        encode(payload)


def test_decimal_is_refused_suggesting_str_or_minor_units() -> None:
    with pytest.raises(
        PayloadNotJSON,
        match=r"type Decimal is not JSON serializable; pass amounts as str\(amount\) "
        "or as integer minor units",
    ):
        encode({"amount": Decimal("1.10")})


@pytest.mark.parametrize(
    ("value", "hint"),
    [
        (datetime.now(UTC), r"type datetime .*; pass datetime\.isoformat\(\)"),
        (date(2030, 1, 1), r"type date .*; pass date\.isoformat\(\)"),
        (uuid4(), r"type UUID .*; pass str\(uuid\)"),
        (b"raw", r"type bytes .*; pass base64 text"),
        ({1, 2}, r"type set .*; pass a sorted list"),
    ],
)
def test_common_non_json_value_is_refused_with_a_hint(value: object, hint: str) -> None:
    with pytest.raises(PayloadNotJSON, match=hint):
        encode({"a": [value]})


def test_any_other_non_json_value_is_refused_naming_its_type() -> None:
    with pytest.raises(PayloadNotJSON, match="Object of type object is not JSON serializable"):
        encode({"a": object()})


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1e16, "10000000000000000.0"),
        (-1.5e17, "-150000000000000000.0"),
        (1e22, "10000000000000000000000.0"),
        (1.7976931348623157e308, "17976931348623157" + "0" * 292 + ".0"),
        (1e-7, "1e-07"),
        (5e-324, "5e-324"),
        (1e15, "1000000000000000.0"),
        (0.1, "0.1"),
        (0.0, "0.0"),
    ],
)
def test_float_is_written_so_jsonb_keeps_it_a_float(value: float, text: str) -> None:
    """jsonb stores numbers as numeric and prints them without an exponent: 1e+16 would come
    back as the int 10000000000000000. With a decimal point, it comes back a float."""
    assert encode({"x": value, "deep": [{"y": value}]}) == f'{{"x":{text},"deep":[{{"y":{text}}}]}}'
    assert json.loads(text) == value
    assert type(json.loads(text)) is float


def test_float_text_is_counted_as_written_against_the_limit() -> None:
    written = len('{"x":10000000000000000.0}')
    assert validate.encode_payload({"x": 1e16}, written) == '{"x":10000000000000000.0}'
    with pytest.raises(PayloadTooLarge, match=f"payload is {written} bytes"):
        validate.encode_payload({"x": 1e16}, written - 1)


@pytest.mark.parametrize("text", ["1e+16", "-0.0", "x 2e+20 -0.0 y"])
def test_text_that_looks_like_a_float_is_left_as_it_is(text: str) -> None:
    payload = {"s": text, text: 1, "n": 1.5}
    assert json.loads(encode(payload)) == payload


def test_ints_stay_ints_whatever_their_size() -> None:
    payload = {"a": 10**16, "b": -(10**300), "c": 0, "d": 1e16}
    assert encode(payload) == (
        '{"a":10000000000000000,"b":-1' + "0" * 300 + ',"c":0,"d":10000000000000000.0}'
    )


@pytest.mark.parametrize("payload", [{"x": -0.0}, {"x": [1, {"y": -0.0}]}, {"x": 1e16, "y": -0.0}])
def test_negative_zero_is_refused_because_jsonb_would_lose_its_sign(
    payload: dict[str, Any],
) -> None:
    with pytest.raises(PayloadNotJSON, match=r"-0\.0.*sign.*pass 0\.0"):
        encode(payload)


def test_integer_too_long_to_write_is_refused() -> None:
    with pytest.raises(PayloadNotJSON, match="payload is not JSON"):
        encode({"a": 10**5000})


def _self_containing_dict() -> dict[str, Any]:
    payload: dict[str, Any] = {}
    payload["self"] = payload
    return payload


def _self_containing_list() -> dict[str, Any]:
    items: list[Any] = []
    items.append(items)
    return {"items": items}


def _indirect_cycle() -> dict[str, Any]:
    a: dict[str, Any] = {}
    b: dict[str, Any] = {"a": a}
    a["b"] = [b]
    return {"root": a}


@pytest.mark.parametrize("make", [_self_containing_dict, _self_containing_list, _indirect_cycle])
def test_cyclic_payload_is_refused_not_hung_on(make: Any) -> None:
    with pytest.raises(PayloadNotJSON, match="payload refers to itself or is nested too deeply"):
        encode(make())


def _nested(depth: int) -> dict[str, Any]:
    payload: dict[str, Any] = {}
    inner = payload
    for _ in range(depth):
        inner["a"] = [{}]
        inner = inner["a"][0]
    return payload


def test_very_deep_payload_is_refused() -> None:
    with pytest.raises(PayloadNotJSON, match="nested too deeply"):
        encode(_nested(100_000))


def test_moderately_deep_payload_is_accepted() -> None:
    payload = _nested(100)
    assert json.loads(encode(payload)) == payload


# -- payloads: NUL and text ------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload", [{"s": "a\x00b"}, {"a\x00": 1}, {"s": ["\x00"]}, {"s": "\\\x00"}]
)
def test_nul_character_is_refused_because_postgresql_refuses_it(payload: dict[str, Any]) -> None:
    with pytest.raises(PayloadNotJSON, match=r"payload holds a NUL character \(\\u0000\)"):
        encode(payload)


@pytest.mark.parametrize("text", ["\\u0000", "\\\\u0000", "a\\u0000b", "\\\\\\\\u0000"])
def test_backslash_u0000_as_plain_text_is_accepted_and_round_trips(text: str) -> None:
    assert "\x00" not in text
    payload = {"s": text, text: "as a key"}
    assert json.loads(encode(payload)) == payload


def test_lone_surrogate_in_text_is_refused() -> None:
    with pytest.raises(PayloadNotJSON, match="not valid Unicode"):
        encode({"s": "\ud800"})


# -- payloads: size --------------------------------------------------------------------------


def test_payload_exactly_at_the_limit_is_accepted() -> None:
    payload = {"s": "x" * 100}
    size = len(encode(payload))
    assert validate.encode_payload(payload, size) == encode(payload)


def test_payload_one_byte_over_the_limit_is_refused_with_both_sizes() -> None:
    payload = {"s": "x" * 100}
    size = len(encode(payload))
    with pytest.raises(
        PayloadTooLarge, match=f"payload is {size} bytes of JSON; the limit is {size - 1} "
    ):
        validate.encode_payload(payload, size - 1)


def test_payload_too_large_is_also_an_invalid_job() -> None:
    with pytest.raises(InvalidJob):
        validate.encode_payload({"s": "x"}, 1)


@pytest.mark.parametrize(("char", "width"), [("é", 2), ("€", 3), ("😀", 4)])
def test_payload_size_counts_utf8_bytes_not_characters(char: str, width: int) -> None:
    payload = {"s": char * 10}
    characters = len('{"s":""}') + 10
    size = characters - 10 + 10 * width
    assert validate.encode_payload(payload, size) == f'{{"s":"{char * 10}"}}'
    with pytest.raises(PayloadTooLarge, match=f"payload is {size} bytes"):
        validate.encode_payload(payload, size - 1)
    with pytest.raises(PayloadTooLarge):
        validate.encode_payload(payload, characters)


# -- payloads: round trip ------------------------------------------------------------------

# Lone surrogates are refused (see above), so only encodable text is drawn.
_text = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"))
_floats = st.floats(allow_nan=False, allow_infinity=False).filter(
    lambda x: x != 0 or math.copysign(1, x) > 0  # -0.0 is refused, see above
)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | _floats | _text,
    lambda children: st.lists(children) | st.dictionaries(_text, children),
    max_leaves=30,
)


@settings(database=None, deadline=None)
@given(st.dictionaries(_text, _json))
def test_any_json_compatible_dict_round_trips(payload: dict[str, Any]) -> None:
    assert same(json.loads(validate.encode_payload(payload, BIG)), payload)


def same(got: Any, want: Any) -> bool:
    """Equal, and of the same types all the way down: 1.0 == 1, but a float is no int."""
    if isinstance(want, tuple):
        want = list(want)
    if type(got) is not type(want):
        return False
    if isinstance(want, dict):
        return got.keys() == want.keys() and all(same(got[k], want[k]) for k in want)
    if isinstance(want, list):
        return len(got) == len(want) and all(same(g, w) for g, w in zip(got, want, strict=True))
    return bool(got == want)
