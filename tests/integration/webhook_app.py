"""The application a test's relay process runs: ``--app tests.integration.webhook_app:registry``.

One destination, ``partner``: a webhook to the test's receiver (``TEST_WEBHOOK_URL``), signed
with ``TEST_WEBHOOK_SECRET``, loopback allowed, retried quickly.
"""

from __future__ import annotations

import os

import tenacity

import outbox
from outbox.publish import Webhook

registry = outbox.Registry()
registry.destination(
    "partner",
    Webhook(
        os.environ["TEST_WEBHOOK_URL"], secret=os.environ["TEST_WEBHOOK_SECRET"], timeout=5,
        allow_private=True,
    ),
    max_attempts=50,
    retry=tenacity.wait_fixed(0.5),
)  # fmt: skip
