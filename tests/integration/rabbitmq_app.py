"""The application of the RabbitMQ kill -9 test's relays: ``--app
tests.integration.rabbitmq_app:registry``.

The first message the broker confirms kills the relay process at once, after the confirm and
before the job's completion: the worst moment, when the broker holds the message and the
database does not know it. A marker file makes it happen once across the test's relays.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence
from pathlib import Path

import tenacity

import outbox
from outbox.publish import Delivery, Limits, Message, RabbitMQ


class KilledAfterConfirm:
    """The RabbitMQ target, with a SIGKILL of its own process after the first confirm (the
    relay calls ``publish_many``; ``publish`` alike)."""

    extra = "rabbitmq"

    def __init__(self, target: RabbitMQ, marker: Path) -> None:
        self.target, self.marker = target, marker

    def start(self, limits: Limits) -> None:
        self.target.start(limits)

    def publish(self, message: Message) -> Delivery:
        delivery = self.target.publish(message)
        if not self.marker.exists():
            self.marker.write_text(message.id)
            os.kill(os.getpid(), signal.SIGKILL)
        return delivery

    def publish_many(self, messages: Sequence[Message]) -> list[Delivery | Exception]:
        answers = self.target.publish_many(messages)
        if not self.marker.exists() and isinstance(answers[0], Delivery):
            self.marker.write_text(messages[0].id)
            os.kill(os.getpid(), signal.SIGKILL)
        return answers

    def close(self) -> None:
        self.target.close()


registry = outbox.Registry()
registry.destination(
    "orders",
    KilledAfterConfirm(
        RabbitMQ(os.environ["TEST_RABBITMQ_URL"], routing_key=os.environ["TEST_RABBITMQ_QUEUE"]),
        Path(os.environ["TEST_RABBITMQ_MARKER"]),
    ),
    max_attempts=50,
    retry=tenacity.wait_fixed(0.2),
)
