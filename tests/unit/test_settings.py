"""One settings object: arguments first, then OUTBOX_* variables, then defaults.

Every test passes its environment as a mapping; none reads or changes os.environ.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from outbox import ConfigurationError, Settings
from outbox.settings import MIB, parse_duration


def test_defaults_apply_when_nothing_is_set() -> None:
    settings = Settings.load(env={})
    assert settings.dsn is None
    assert settings.payload_limit == 1 * MIB
    assert settings.idempotency_retention == timedelta(days=7)
    assert settings.default_queue == "default"
    assert settings.default_max_attempts == 25
    assert settings.embedded_dir.name == "embedded-pg"
    assert settings.concurrency == 16
    assert settings.claim_batch == 500
    assert settings.lease == timedelta(seconds=30)
    assert settings.poll_interval == timedelta(seconds=1)
    assert settings.rescue_interval == timedelta(seconds=5)
    assert settings.shutdown_grace == timedelta(seconds=30)
    assert settings.handler_timeout == timedelta(minutes=5)


def test_unrelated_variables_are_ignored() -> None:
    assert Settings.load(env={"DSN": "postgresql://x/y", "OUTBOX": "1"}) == Settings.load(env={})


@pytest.mark.parametrize(
    ("variable", "text", "field", "expected"),
    [
        ("OUTBOX_DSN", "postgresql://u@h/db", "dsn", "postgresql://u@h/db"),
        ("OUTBOX_PAYLOAD_LIMIT", "2048", "payload_limit", 2048),
        ("OUTBOX_IDEMPOTENCY_RETENTION", "2d", "idempotency_retention", timedelta(days=2)),
        ("OUTBOX_DEFAULT_QUEUE", "mail", "default_queue", "mail"),
        ("OUTBOX_DEFAULT_MAX_ATTEMPTS", "5", "default_max_attempts", 5),
        ("OUTBOX_EMBEDDED_DIR", "/srv/pg", "embedded_dir", Path("/srv/pg")),
        ("OUTBOX_CONCURRENCY", "4", "concurrency", 4),
        ("OUTBOX_CLAIM_BATCH", " 250 ", "claim_batch", 250),
        ("OUTBOX_LEASE", "1m", "lease", timedelta(minutes=1)),
        ("OUTBOX_POLL_INTERVAL", "250ms", "poll_interval", timedelta(milliseconds=250)),
        ("OUTBOX_RESCUE_INTERVAL", "10", "rescue_interval", timedelta(seconds=10)),
        ("OUTBOX_SHUTDOWN_GRACE", "0", "shutdown_grace", timedelta(0)),
        ("OUTBOX_HANDLER_TIMEOUT", "1h", "handler_timeout", timedelta(hours=1)),
    ],
)
def test_each_outbox_variable_sets_its_setting(
    variable: str, text: str, field: str, expected: Any
) -> None:
    assert getattr(Settings.load(env={variable: text}), field) == expected


@pytest.mark.parametrize("variable", ["OUTBOX_DSN", "OUTBOX_CONCURRENCY", "OUTBOX_LEASE"])
def test_empty_variable_counts_as_unset(variable: str) -> None:
    assert Settings.load(env={variable: ""}) == Settings.load(env={})


def test_override_beats_the_environment() -> None:
    env = {"OUTBOX_CONCURRENCY": "4", "OUTBOX_DSN": "postgresql://env/db"}
    settings = Settings.load(env=env, concurrency=8, dsn="postgresql://arg/db")
    assert settings.concurrency == 8
    assert settings.dsn == "postgresql://arg/db"


def test_none_override_falls_through_to_the_environment() -> None:
    env = {"OUTBOX_CONCURRENCY": "4", "OUTBOX_DSN": "postgresql://env/db"}
    settings = Settings.load(env=env, concurrency=None, dsn=None)
    assert settings.concurrency == 4
    assert settings.dsn == "postgresql://env/db"


def test_none_override_without_a_variable_falls_through_to_the_default() -> None:
    assert Settings.load(env={}, concurrency=None, lease=None) == Settings.load(env={})


def test_unknown_override_is_refused_by_name() -> None:
    with pytest.raises(ConfigurationError, match=r"^unknown settings: colour, size$"):
        Settings.load(env={}, size=3, colour="blue")


@pytest.mark.parametrize(
    "variable",
    [
        "OUTBOX_PAYLOAD_LIMIT",
        "OUTBOX_DEFAULT_MAX_ATTEMPTS",
        "OUTBOX_CONCURRENCY",
        "OUTBOX_CLAIM_BATCH",
    ],
)
@pytest.mark.parametrize("text", ["many", "1.5", "2k", "0x10"])
def test_variable_that_is_not_a_whole_number_is_refused_naming_it(variable: str, text: str) -> None:
    with pytest.raises(ConfigurationError, match=f"^{variable}='{text}' is not a whole number$"):
        Settings.load(env={variable: text})


@pytest.mark.parametrize(
    "variable",
    [
        "OUTBOX_IDEMPOTENCY_RETENTION",
        "OUTBOX_LEASE",
        "OUTBOX_POLL_INTERVAL",
        "OUTBOX_RESCUE_INTERVAL",
        "OUTBOX_SHUTDOWN_GRACE",
        "OUTBOX_HANDLER_TIMEOUT",
    ],
)
def test_variable_that_is_not_a_duration_is_refused_naming_it(variable: str) -> None:
    with pytest.raises(ConfigurationError, match=f"^{variable}='soon' is not a duration; "):
        Settings.load(env={variable: "soon"})


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"OUTBOX_PAYLOAD_LIMIT": "0"}, "payload_limit must be at least 1 byte, not 0"),
        ({"OUTBOX_PAYLOAD_LIMIT": "-5"}, "payload_limit must be at least 1 byte, not -5"),
        ({"OUTBOX_DEFAULT_MAX_ATTEMPTS": "0"}, "default_max_attempts must be at least 1, not 0"),
        ({"OUTBOX_CONCURRENCY": "0"}, "concurrency must be at least 1, not 0"),
        ({"OUTBOX_CLAIM_BATCH": "-1"}, "claim_batch must be at least 1, not -1"),
        ({"OUTBOX_IDEMPOTENCY_RETENTION": "0"}, "idempotency_retention must be longer than zero"),
        ({"OUTBOX_LEASE": "0s"}, "lease must be longer than zero"),
        ({"OUTBOX_LEASE": "1s"}, r"lease must be at least 2 seconds \(heartbeats renew it\)"),
        ({"OUTBOX_POLL_INTERVAL": "0ms"}, "poll_interval must be longer than zero"),
        ({"OUTBOX_RESCUE_INTERVAL": "0"}, "rescue_interval must be longer than zero"),
        ({"OUTBOX_HANDLER_TIMEOUT": "0m"}, "handler_timeout must be longer than zero"),
        ({"OUTBOX_DEFAULT_QUEUE": "has space"}, "default_queue: job queue 'has space' may hold"),
    ],
)
def test_zero_negative_or_malformed_value_is_refused_with_reason(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=f"^{message}"):
        Settings.load(env=env)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"concurrency": 0}, "concurrency must be at least 1, not 0"),
        ({"payload_limit": -1}, "payload_limit must be at least 1 byte"),
        ({"lease": timedelta(seconds=-1)}, "lease must be longer than zero"),
        ({"idempotency_retention": timedelta(0)}, "idempotency_retention must be longer than zero"),
        ({"default_queue": ""}, "default_queue: job queue must not be empty"),
    ],
)
def test_bad_override_is_refused_like_a_bad_variable(
    overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=f"^{message}"):
        Settings.load(env={}, **overrides)


def test_a_lease_longer_than_24_days_is_refused() -> None:
    assert Settings(lease=timedelta(days=24)).lease == timedelta(days=24)
    with pytest.raises(ConfigurationError, match=r"^lease must be at most 24 days"):
        Settings.load(env={"OUTBOX_LEASE": "25d"})


def test_two_second_lease_is_the_shortest_accepted() -> None:
    assert Settings.load(env={"OUTBOX_LEASE": "2"}).lease == timedelta(seconds=2)


def test_negative_shutdown_grace_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="shutdown_grace"):
        Settings.load(env={}, shutdown_grace=timedelta(seconds=-1))


# -- parse_duration --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90", timedelta(seconds=90)),
        ("90s", timedelta(seconds=90)),
        ("1.5m", timedelta(seconds=90)),
        ("2h", timedelta(hours=2)),
        ("7d", timedelta(days=7)),
        ("250ms", timedelta(milliseconds=250)),
        ("0", timedelta(0)),
        (" 5 s ", timedelta(seconds=5)),
        ("0.5", timedelta(milliseconds=500)),
    ],
)
def test_duration_is_seconds_or_a_number_with_a_unit(text: str, expected: timedelta) -> None:
    assert parse_duration(text, name="OUTBOX_LEASE") == expected


@pytest.mark.parametrize(
    "text",
    ["", "soon", "-5", "5 minutes", "5S", "1e3", "inf", "nan", "5s5", "1.m", ".5s", "5 ms s"],
)
def test_garbage_duration_is_refused_naming_the_variable_and_the_forms(text: str) -> None:
    with pytest.raises(
        ConfigurationError,
        match=rf"^OUTBOX_LEASE={text!r} is not a duration; write a number of seconds "
        r"or one followed by ms, s, m, h or d \(for example 7d\)$",
    ):
        parse_duration(text, name="OUTBOX_LEASE")


@pytest.mark.parametrize("text", ["9999999999d", "1" + "0" * 400], ids=["9999999999d", "1e400"])
def test_duration_too_long_for_a_timedelta_is_refused_naming_the_variable(text: str) -> None:
    with pytest.raises(ConfigurationError, match="OUTBOX_LEASE"):
        Settings.load(env={"OUTBOX_LEASE": text})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"lease": 30},
            r"lease must be a datetime\.timedelta \(for example "
            r"timedelta\(seconds=30\)\), not int 30",
        ),
        ({"seal_interval": "1s"}, r"seal_interval must be a datetime\.timedelta .*, not str '1s'"),
        ({"idempotency_retention": 7.5}, "idempotency_retention must be a datetime.timedelta"),
        ({"concurrency": "16"}, "concurrency must be a whole number, not str '16'"),
        ({"claim_batch": 2.5}, "claim_batch must be a whole number, not float 2.5"),
        ({"payload_limit": True}, "payload_limit must be a whole number, not bool True"),
        ({"default_max_attempts": "25"}, "default_max_attempts must be a whole number"),
        ({"dsn": 5432}, "dsn must be a str .*, not int 5432"),
        ({"embedded_dir": 7}, "embedded_dir must be a path, not int 7"),
        ({"default_queue": 3}, "default_queue: job queue must be a str, not int"),
    ],
)
def test_a_value_of_the_wrong_type_is_refused_naming_the_setting(
    overrides: dict[str, Any], message: str
) -> None:
    """Settings(...) is called from code: a number where a timedelta belongs (or a string
    where a number does) gets the setting's name and the type it needs, not a TypeError from
    deep inside, whether it comes through Settings or Settings.load."""
    for make in (Settings, lambda **kw: Settings.load(env={}, **kw)):
        with pytest.raises(ConfigurationError, match=f"^{message}"):
            make(**overrides)


def test_an_embedded_dir_given_as_a_string_is_a_path() -> None:
    assert Settings(embedded_dir="/srv/pg").embedded_dir == Path("/srv/pg")


@pytest.mark.parametrize("env", [5, [("OUTBOX_LEASE", "30")]])
def test_an_env_that_is_not_a_mapping_is_refused(env: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"^env must be a mapping of variable names"):
        Settings.load(env=env)


def test_any_integer_type_is_taken_as_a_whole_number() -> None:
    class Count(int):
        pass

    class Index:  # numpy's integers are no int, but say what int they are this way
        def __index__(self) -> int:
            return 8

    settings = Settings(concurrency=Count(4), claim_batch=Index())  # type: ignore[arg-type]
    assert (settings.concurrency, settings.claim_batch) == (4, 8)
    assert type(settings.claim_batch) is int
