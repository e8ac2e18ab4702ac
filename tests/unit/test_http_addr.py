"""``--metrics-addr``: the forms it accepts, the ones it refuses, and IPv6 addresses that
are served, not just accepted."""

from __future__ import annotations

import errno
import socket
import threading
import urllib.request

import pytest
from outbox_relay.http import HttpServer, format_addr, parse_addr
from prometheus_client import CollectorRegistry

from outbox.errors import ConfigurationError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
        ("localhost:65535", ("localhost", 65535)),
        (":9464", ("127.0.0.1", 9464)),
        ("[::1]:9464", ("::1", 9464)),
        ("[::]:9464", ("::", 9464)),
        ("[2001:db8::17]:80", ("2001:db8::17", 80)),
    ],
)
def test_accepted_forms(text: str, expected: tuple[str, int]) -> None:
    assert parse_addr(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("9464", "should be host:port"),
        ("localhost", "should be host:port"),
        ("127.0.0.1:", "should be host:port"),
        ("127.0.0.1:http", "should be host:port"),
        ("127.0.0.1:+80", "should be host:port"),
        ("127.0.0.1:65536", "port out of range"),
        ("[::1]", "should be host:port"),
        ("[::1:9464", "should be host:port"),
        ("[::1]9464", "should be host:port"),
        ("[]:9464", "not an IPv6 address"),
        ("[localhost]:9464", "not an IPv6 address"),
        ("[::g]:9464", "not an IPv6 address"),
        ("[::1]:70000", "port out of range"),
        ("::1:9464", "in brackets"),
        ("::9464", "in brackets"),
    ],
)
def test_refused_forms_say_why(text: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as refused:
        parse_addr(text)
    assert repr(text) in str(refused.value)


@pytest.mark.parametrize(
    ("addr", "shown"),
    [(("127.0.0.1", 9464), "127.0.0.1:9464"), (("::1", 9464), "[::1]:9464")],
)
def test_addresses_are_shown_as_they_are_written(addr: tuple[str, int], shown: str) -> None:
    assert format_addr(addr) == shown
    assert parse_addr(shown) == addr


def serving(addr: tuple[str, int]) -> HttpServer:
    server = HttpServer(addr, CollectorRegistry(), lambda: (True, "ready"), lambda: True)
    threading.Thread(target=server.run, daemon=True).start()
    return server


@pytest.fixture
def ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("this Python was built without IPv6")
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError as exc:
        if exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
            pytest.skip(f"this machine cannot bind ::1: {exc.strerror}")
        raise


@pytest.mark.usefixtures("ipv6_loopback")
def test_ipv6_address_is_served() -> None:
    server = serving(parse_addr("[::1]:0"))
    try:
        host, port = server.address
        assert host == "::1"
        assert port > 0
        url = f"http://{format_addr(server.address)}/healthz"
        with urllib.request.urlopen(url, timeout=5) as response:
            assert (response.status, response.read()) == (200, b"alive\n")
    finally:
        server.stop()


@pytest.mark.usefixtures("ipv6_loopback")
def test_ipv6_address_in_use_is_reported_as_in_use() -> None:
    server = serving(("::1", 0))
    try:
        with pytest.raises(ConfigurationError, match="another relay on this host may have it") as e:
            HttpServer(server.address, CollectorRegistry(), lambda: (True, ""), lambda: True)
        assert f"cannot serve metrics on [::1]:{server.address[1]}:" in str(e.value)
    finally:
        server.stop()


def test_address_not_on_this_machine_is_not_reported_as_in_use() -> None:
    """192.0.2.1 is a documentation address (TEST-NET-1), on no interface."""
    with pytest.raises(ConfigurationError) as refused:
        HttpServer(("192.0.2.1", 0), CollectorRegistry(), lambda: (True, ""), lambda: True)
    message = str(refused.value)
    assert message.startswith("cannot serve metrics on 192.0.2.1:0: ")
    assert "in use" not in message
    assert "another relay" not in message
    assert "--metrics-addr" in message
