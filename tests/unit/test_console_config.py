"""The console's settings, its anti-forgery guard and its charts, without a database."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from starlette.requests import Request

from outbox.console.activity import Minute
from outbox.console.charts import HEIGHT, bars
from outbox.console.config import ConsoleConfig, is_loopback, parse_addr, parse_users
from outbox.console.guard import ANONYMOUS, actor, forged, token
from outbox.errors import ConfigurationError

#: Drawn inline in HTML pages, where the parser gives <svg> its namespace: none is written.
SVG = ""

# -- parse_users -------------------------------------------------------------------------


def test_parse_users_reads_user_password_pairs_separated_by_commas() -> None:
    assert parse_users("alice:s3cret") == {"alice": "s3cret"}
    assert parse_users(" alice:s3cret , bob:a:b:c ,") == {"alice": "s3cret", "bob": "a:b:c"}
    assert parse_users("ünï:pässwörd") == {"ünï": "pässwörd"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("alice", "basic auth entry 'alice' must be user:password"),
        ("alice:", "basic auth entry 'alice' must be user:password"),
        (":s3cret", "basic auth entry ':s3cret' must be user:password"),
        ("alice:x,bob", "basic auth entry 'bob' must be user:password"),
        ("alice:x,alice:y", "basic auth names user 'alice' twice"),
        ("", "basic auth names no user: write user:password"),
        (" , ,", "basic auth names no user"),
    ],
)
def test_parse_users_refuses_what_is_not_user_password(text: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        parse_users(text)


# -- parse_addr and is_loopback ----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9465", ("127.0.0.1", 9465)),
        (" 0.0.0.0:1 ", ("0.0.0.0", 1)),
        ("[::1]:9465", ("::1", 9465)),
        ("localhost:65535", ("localhost", 65535)),
        ("console.internal:8080", ("console.internal", 8080)),
    ],
)
def test_parse_addr_reads_host_and_port(text: str, expected: tuple[str, int]) -> None:
    assert parse_addr(text) == expected


@pytest.mark.parametrize(
    "text", ["9465", ":9465", "host:", "host:0", "host:65536", "host:-1", "host:http", "[::1]", ""]
)
def test_parse_addr_refuses_what_is_not_host_port(text: str) -> None:
    with pytest.raises(
        ConfigurationError, match=re.escape("must be host:port, for example 127.0.0.1:9465")
    ):
        parse_addr(text)


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "127.8.9.10", "::1"])
def test_loopback_hosts(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize(
    "host", ["0.0.0.0", "::", "10.0.0.1", "192.168.1.2", "example.com", "localhost.evil", ""]
)
def test_hosts_others_can_reach_are_not_loopback(host: str) -> None:
    assert not is_loopback(host)


# -- ConsoleConfig -----------------------------------------------------------------------


def test_a_default_console_is_read_only_without_sign_in_and_with_a_fresh_secret() -> None:
    config = ConsoleConfig()
    assert config.allow_actions is False
    assert config.base_path == ""
    assert dict(config.users) == {}
    assert config.statement_timeout == timedelta(seconds=5)
    assert len(config.secret) == 32
    assert ConsoleConfig().secret != config.secret


@pytest.mark.parametrize("path", ["/outbox", "/ops/outbox", "/a.b_c~d-e", "/x1"])
def test_base_paths_that_look_like_one_are_accepted(path: str) -> None:
    assert ConsoleConfig(base_path=path).base_path == path


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"base_path": "outbox"}, "base path 'outbox' must look like /outbox"),
        ({"base_path": "/outbox/"}, "must look like /outbox"),
        ({"base_path": "/"}, "must look like /outbox"),
        ({"base_path": "/a b"}, "must look like /outbox"),
        ({"base_path": "/a//b"}, "must look like /outbox"),
        ({"base_path": "/<script>"}, "must look like /outbox"),
        ({"statement_timeout": timedelta(milliseconds=99)}, "at least 100ms"),
        ({"refresh": timedelta(milliseconds=999)}, "refreshes at most once a second"),
        ({"users": {"": "pw"}}, "user name '' must be non-empty, without ':'"),
        ({"users": {"a:b": "pw"}}, "user name 'a:b' must be non-empty"),
        ({"secret": b"0123456789abcde"}, "at least 16 bytes"),
    ],
)
def test_console_config_refuses_settings_it_cannot_serve(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        ConsoleConfig(**options)


def test_the_limits_themselves_are_accepted() -> None:
    config = ConsoleConfig(
        statement_timeout=timedelta(milliseconds=100), refresh=timedelta(seconds=1),
        secret=b"s" * 16, users={"alice": "pw"},
    )  # fmt: skip
    assert config.statement_timeout == timedelta(milliseconds=100)


def test_console_config_refuses_an_empty_password() -> None:
    with pytest.raises(ConfigurationError):
        ConsoleConfig(users={"alice": ""})


# -- the anti-forgery guard --------------------------------------------------------------


SECRET = b"k" * 32


def request(*headers: tuple[str, str], who: str | None = None) -> Request:
    scope: dict[str, Any] = {
        "type": "http", "method": "POST", "path": "/jobs/retry", "query_string": b"",
        "headers": [(b"host", b"console.example:9465")]
        + [(name.lower().encode(), value.encode()) for name, value in headers],
    }  # fmt: skip
    if who is not None:
        scope["state"] = {"actor": who}
    return Request(scope)


def test_a_token_is_an_hmac_of_the_actor_under_the_secret() -> None:
    mine = token(SECRET, "alice")
    assert len(mine) == 64
    assert int(mine, 16) >= 0
    assert token(SECRET, "alice") == mine
    assert token(SECRET, "bob") != mine
    assert token(b"j" * 32, "alice") != mine


def test_the_actor_is_the_signed_in_user_or_anonymous() -> None:
    assert actor(request()) == ANONYMOUS == "console (no sign-in)"
    assert actor(request(who="alice")) == "alice"


def test_a_post_from_this_console_with_its_token_is_not_forged() -> None:
    sent = token(SECRET, ANONYMOUS)
    assert forged(request(), SECRET, sent) is None
    assert forged(request(("Origin", "http://console.example:9465")), SECRET, sent) is None
    assert forged(request(("Sec-Fetch-Site", "same-origin")), SECRET, sent) is None
    assert forged(request(("Sec-Fetch-Site", "none")), SECRET, sent) is None
    assert forged(request(who="alice"), SECRET, token(SECRET, "alice")) is None


@pytest.mark.parametrize(
    ("headers", "sent", "why"),
    [
        ((), None, "the form carries no valid token of this console"),
        ((), "", "the form carries no valid token"),
        ((), "0" * 64, "the form carries no valid token"),
        ((), token(b"j" * 32, ANONYMOUS), "the form carries no valid token"),
        ((), token(SECRET, "alice"), "the form carries no valid token"),
        ((("Origin", "https://evil.example"),), "ok", "came from https://evil.example, not from"),
        ((("Origin", "http://console.example:1"),), "ok", "came from http://console.example:1"),
        ((("Origin", "null"),), "ok", "the request came from an opaque origin"),
        ((("Sec-Fetch-Site", "cross-site"),), "ok", "from another site (Sec-Fetch-Site: cross"),
        ((("Sec-Fetch-Site", "same-site"),), "ok", "(Sec-Fetch-Site: same-site)"),
    ],
)
def test_a_post_without_this_consoles_token_or_from_elsewhere_is_forged(
    headers: tuple[tuple[str, str], ...], sent: str | None, why: str
) -> None:
    if sent == "ok":
        sent = token(SECRET, ANONYMOUS)
    reason = forged(request(*headers), SECRET, sent)
    assert reason is not None
    assert why in reason


# -- charts ------------------------------------------------------------------------------


START = datetime(2026, 12, 4, 14, 0, tzinfo=UTC)


def minutes(*counts: tuple[int, int, int]) -> list[Minute]:
    return [Minute(START + timedelta(minutes=i), *c) for i, c in enumerate(counts)]


def test_a_chart_of_no_minutes_is_an_empty_svg() -> None:
    svg = bars([], ["succeeded"], label="jobs succeeded per minute", colours=["#2f7d4f"])
    root = ET.fromstring(str(svg))
    assert root.tag == f"{SVG}svg"
    assert root.get("aria-label") == "jobs succeeded per minute"
    assert root.findall(f".//{SVG}rect") == []
    assert [t.text for t in root.findall(f"{SVG}text")] == ["-0m", "now", "1/min"]


def test_a_chart_draws_one_bar_per_minute_stacked_with_its_counts_in_a_title() -> None:
    data = minutes((5, 0, 0), (0, 0, 0), (1_234, 2, 1))
    svg = str(bars(data, ["retried", "dead"], label="failed <attempts> & more",
                   colours=["#c98a00", "#b3261e"]))  # fmt: skip
    root = ET.fromstring(svg)
    assert root.get("aria-label") == "failed <attempts> & more"
    groups = root.findall(f"{SVG}g")
    assert [g.find(f"{SVG}title").text for g in groups] == [  # type: ignore[union-attr]
        "14:00 UTC: 0 retried, 0 dead",
        "14:01 UTC: 0 retried, 0 dead",
        "14:02 UTC: 2 retried, 1 dead",
    ]
    assert [len(g.findall(f"{SVG}rect")) for g in groups] == [0, 0, 2]
    stacked = groups[2].findall(f"{SVG}rect")
    assert [r.get("fill") for r in stacked] == ["#c98a00", "#b3261e"]
    heights = [float(r.get("height", "0")) for r in stacked]
    assert heights == [pytest.approx(HEIGHT * 2 / 3, abs=0.1), pytest.approx(HEIGHT / 3, abs=0.1)]
    assert "3/min" in [t.text for t in root.findall(f"{SVG}text")]

    done = ET.fromstring(str(bars(data, ["succeeded"], label="ok", colours=["#2f7d4f"])))
    titles = [g.find(f"{SVG}title").text for g in done.findall(f"{SVG}g")]  # type: ignore[union-attr]
    assert titles[2] == "14:02 UTC: 1,234 succeeded"
    tallest = max(float(r.get("height", "0")) for r in done.iter(f"{SVG}rect"))
    assert tallest == pytest.approx(HEIGHT)


def test_a_chart_refuses_series_and_colours_that_do_not_pair() -> None:
    with pytest.raises(ValueError, match="zip"):
        bars(minutes((1, 1, 1)), ["retried", "dead"], label="x", colours=["#000"])


def test_the_keys_dot_and_dot_dot_link_by_query_every_other_key_by_path() -> None:
    from outbox.console.app import key_url

    assert key_url("/outbox", "..") == "/outbox/keys?key=.."
    assert key_url("", ".") == "/keys?key=."
    assert key_url("", "a/../b") == "/keys/a%2F..%2Fb"
    assert key_url("", "acct:42 ü") == "/keys/acct%3A42%20%C3%BC"
