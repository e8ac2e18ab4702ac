"""``/metrics``, ``/healthz`` and ``/readyz`` on the relay's metrics address.

Bound to 127.0.0.1 unless another address is asked for: metrics name queues and job
types, which are nobody else's business.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import sqlalchemy as sa
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from outbox import migrate
from outbox.errors import ConfigurationError, MigrationError

DEFAULT_ADDR = "127.0.0.1:9464"
READY_TTL = 2.0  # seconds a readiness answer is reused


def parse_addr(text: str) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or ``:port`` (which means 127.0.0.1)."""
    usage = f"--metrics-addr {text!r} should be host:port, or [IPv6 address]:port"
    if text.startswith("["):
        host, bracket, port = text[1:].partition("]:")
        if not bracket:
            raise ConfigurationError(usage)
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigurationError(
                f"--metrics-addr {text!r}: {host!r} is not an IPv6 address"
            ) from None
    else:
        host, colon, port = text.rpartition(":")
        if not colon:
            raise ConfigurationError(usage)
        if ":" in host:
            raise ConfigurationError(
                f"--metrics-addr {text!r}: write an IPv6 address in brackets, as in [::1]:9464"
            )
        host = host or "127.0.0.1"
    if not (port.isascii() and port.isdigit()):
        raise ConfigurationError(usage)
    number = int(port)
    if not 0 <= number <= 65535:
        raise ConfigurationError(f"--metrics-addr {text!r}: port out of range")
    return host, number


def format_addr(addr: tuple[str, int]) -> str:
    """An address as ``--metrics-addr`` takes it: IPv6 hosts in brackets."""
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _IPv6HTTPServer(ThreadingHTTPServer):
    address_family = socket.AF_INET6


class Readiness:
    """Ready when the database answers and its schema is the one this code needs."""

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine
        self._lock = threading.Lock()
        self._checked = 0.0
        self._answer = (False, "not checked yet")

    def __call__(self) -> tuple[bool, str]:
        with self._lock:
            if time.monotonic() - self._checked > READY_TTL:
                self._answer = self._check()
                self._checked = time.monotonic()
            return self._answer

    def _check(self) -> tuple[bool, str]:
        try:
            with self._engine.connect() as connection:
                migrate.check_at_head(connection)
        except MigrationError as exc:
            return False, str(exc)
        except sa.exc.DBAPIError as exc:
            reason = str(exc.orig or exc).strip().splitlines()
            return False, f"database unreachable: {reason[0] if reason else type(exc).__name__}"
        return True, "ready"


class HttpServer:
    """Serves the endpoints from a thread; ``run()``/``stop()`` like every relay service."""

    name = "http"

    def __init__(
        self,
        addr: tuple[str, int],
        registry: CollectorRegistry,
        ready: Callable[[], tuple[bool, str]],
        alive: Callable[[], bool],
    ) -> None:
        def metrics() -> tuple[int, str, bytes]:
            return 200, CONTENT_TYPE_LATEST, generate_latest(registry)

        def healthz() -> tuple[int, str, bytes]:
            return _text(200, "alive") if alive() else _text(503, "stopped")

        def readyz() -> tuple[int, str, bytes]:
            ok, message = ready()
            return _text(200 if ok else 503, message)

        endpoints = {"/metrics": metrics, "/healthz": healthz, "/readyz": readyz}

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                endpoint = endpoints.get(self.path.split("?", 1)[0])
                status, content_type, body = endpoint() if endpoint else _text(404, "not found")
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                """Scrapes every few seconds are not news."""

        server_class = _IPv6HTTPServer if ":" in addr[0] else ThreadingHTTPServer
        try:
            self._server = server_class(addr, Handler)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            if exc.errno == errno.EADDRINUSE:
                hint = "another relay on this host may have it: pass another --metrics-addr"
            else:
                hint = "pass another --metrics-addr"
            raise ConfigurationError(
                f"cannot serve metrics on {format_addr(addr)}: {reason}; {hint}, or 'off'"
            ) from None
        self._server.daemon_threads = True
        host, port = self._server.server_address[:2]
        self.address: tuple[str, int] = (str(host), int(port))

    def run(self) -> None:
        self._server.serve_forever(poll_interval=0.2)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _text(status: int, message: str) -> tuple[int, str, bytes]:
    return status, "text/plain; charset=utf-8", (message + "\n").encode()
