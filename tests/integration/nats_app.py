"""The application of test_publish_nats.py's relay processes: ``--app
tests.integration.nats_app:registry``.

One destination, ``feed``, a NatsJetStream whose server and subject come from
``OUTBOX_TEST_NATS_URL`` and ``OUTBOX_TEST_NATS_SUBJECT``. With ``OUTBOX_TEST_NATS_HOLD`` set
to a path, the first message to get its PubAck creates that file and its handler then waits
without returning, so a test can kill the process between the broker's ack and the job's
completion.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import tenacity

import outbox
from outbox.publish import Delivery, Limits, Message, NatsJetStream


class HoldAfterAck:
    """A NatsJetStream that, once, holds a confirmed message instead of completing it."""

    extra = "nats"

    def __init__(self, target: NatsJetStream, hold: str | None) -> None:
        self.target, self.hold = target, Path(hold) if hold else None
        self._once = threading.Lock()

    def start(self, limits: Limits) -> None:
        self.target.start(limits)

    def publish(self, message: Message) -> Delivery:
        delivery = self.target.publish(message)
        if self.hold is not None and self._once.acquire(blocking=False):
            self.hold.write_text(f"{message.id} {delivery}")
            time.sleep(3600)  # the test kills the process now
        return delivery

    def close(self) -> None:
        self.target.close()


registry = outbox.Registry()
registry.destination(
    "feed",
    HoldAfterAck(
        NatsJetStream(
            os.environ.get("OUTBOX_TEST_NATS_URL", "nats://127.0.0.1:4222"),
            subject=os.environ.get("OUTBOX_TEST_NATS_SUBJECT", "outbox-test.{key}"),
            timeout=2,
        ),
        os.environ.get("OUTBOX_TEST_NATS_HOLD"),
    ),
    max_attempts=50,
    timeout=3600,
    retry=tenacity.wait_fixed(0.5),
)
