"""The partner's webhook receiver: verify each ``transfer.posted`` event, apply it once.

A delivery may arrive twice (a relay that died after the partner answered publishes it
again, under the same ``webhook-id``), so the receiver records the id with
:func:`outbox.inbox` in the transaction that applies the event: the first copy commits both,
a later one finds the id and is acknowledged without being applied again. A request whose
signature does not verify is refused, never applied.

In the demo it shares the ledger's database; a real partner has its own, migrated with
``outbox migrate`` for the inbox table.
"""

from __future__ import annotations

import http.client
import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

import outbox
from outbox.demo.models import Notice
from outbox.publish.signing import WebhookVerificationError, verify_webhook

#: The receiving application, as the inbox knows it.
CONSUMER = "partner"


def receive(engine: sa.Engine, secret: str, body: bytes, headers: dict[str, str]) -> int:
    """Apply one delivery; the HTTP status to answer."""
    try:
        message_id = verify_webhook(body, headers, secret)
    except WebhookVerificationError:
        return 401
    event = json.loads(body)
    with Session(engine) as session:
        first = outbox.inbox(session, CONSUMER, message_id)
        if first:
            session.add(
                Notice(message_id=message_id, reference=event["reference"], amount=event["amount"])
            )
        session.commit()
    return 204 if first else 200  # both acknowledge: a duplicate is not an error


class Receiver:
    """The receiver as an HTTP server on 127.0.0.1 (a free port), in a thread of its own.

    ``answers`` counts its answers by status; ``last`` is the last request it took, which
    the demo sends again to show a duplicate being skipped.
    """

    def __init__(self, engine: sa.Engine, secret: str) -> None:
        self.answers: Counter[int] = Counter()
        self.last: tuple[bytes, dict[str, str]] | None = None
        lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                headers = {name.lower(): value for name, value in self.headers.items()}
                status = receive(engine, secret, body, headers)
                with lock:
                    receiver.answers[status] += 1
                    if status != 401:
                        receiver.last = (body, headers)
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks"

    def send(self, body: bytes, headers: dict[str, str]) -> int:
        """POST a request to the receiver as a sender would; the status it answered."""
        connection = http.client.HTTPConnection(*self.server.server_address[:2], timeout=10)
        try:
            connection.request("POST", "/hooks", body, headers)
            return connection.getresponse().status
        finally:
            connection.close()

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
