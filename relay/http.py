"""``/metrics``, ``/healthz`` and ``/readyz`` on the relay's metrics address.

Bound to 127.0.0.1 unless another address is asked for: metrics name queues and job
types, which are nobody else's business.
"""

from __future__ import annotations

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
    host, _, port = text.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    try:
        number = int(port)
    except ValueError:
        raise ConfigurationError(f"--metrics-addr {text!r} should be host:port") from None
    if not 0 <= number <= 65535:
        raise ConfigurationError(f"--metrics-addr {text!r}: port out of range")
    return host, number


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

        try:
            self._server = ThreadingHTTPServer(addr, Handler)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot serve metrics on {addr[0]}:{addr[1]}: {exc.strerror}; another relay on "
                "this host may have it: pass another --metrics-addr, or 'off'"
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
