"""The application a Kafka test's relay process runs: ``--app
tests.integration.kafka_app:registry``, publishing destination ``stream`` to the mock cluster
at ``$KAFKA_TEST_BOOTSTRAP``, topic ``$KAFKA_TEST_TOPIC``.

With ``$KAFKA_TEST_STALL`` naming a file, the first publish that Kafka acknowledged creates
the file and never returns: the test kills the process there, between the broker's
acknowledgement and the job's completion.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path

import outbox
from outbox.publish import Delivery, Kafka, Message


class StallAfterAck(Kafka):
    def publish_many(self, messages: Sequence[Message]) -> list[Delivery | Exception]:
        answers = super().publish_many(messages)
        stall = os.environ.get("KAFKA_TEST_STALL")
        if stall and any(isinstance(a, Delivery) for a in answers):
            try:
                Path(stall).touch(exist_ok=False)
            except FileExistsError:
                return answers
            threading.Event().wait()  # until the test kills the process
        return answers


registry = outbox.Registry()
registry.destination(
    "stream",
    StallAfterAck(os.environ["KAFKA_TEST_BOOTSTRAP"], topic=os.environ["KAFKA_TEST_TOPIC"]),
    max_attempts=50,
)
