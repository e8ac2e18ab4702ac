"""Publishing outbox messages to brokers and endpoints, effectively once end to end.

In the application, in the transaction of its own writes::

    outbox.publish(session, "orders", {"order_id": 7}, key="order:7", event="order.paid")

In the relay's registry, where each destination goes::

    from outbox.publish import RabbitMQ
    registry.destination("orders", RabbitMQ("amqp://...", routing_key="orders"))

``outbox.publish`` is this module and can be called as :func:`publish`; type checkers see a
module, so typed code calls ``outbox.publish.publish(...)``, the same function. The targets
(``RabbitMQ``, ``NatsJetStream``, ``Kafka``, ``Webhook``) are imported when first named:
each needs its client, an optional extra.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

from outbox.publish.api import TYPE_PREFIX, Publish, destination_of, publish, publish_many
from outbox.publish.target import (
    Delivery,
    Limits,
    Message,
    PublishFailed,
    PublishRejected,
    Target,
)

#: Names imported from their module when first used: their clients are optional.
_LAZY = {
    "RabbitMQ": "outbox.publish.rabbitmq",
    "NatsJetStream": "outbox.publish.jetstream",
    "Kafka": "outbox.publish.kafka",
    "Webhook": "outbox.publish.webhook",
    "verify_webhook": "outbox.publish.signing",
    "sign_webhook": "outbox.publish.signing",
    "WebhookVerificationError": "outbox.publish.signing",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'outbox.publish' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


class _CallableModule(types.ModuleType):
    """``outbox.publish(...)`` calls :func:`publish`: DESIGN's spelling of the common case."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return publish(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

__all__ = [
    "TYPE_PREFIX",
    "Delivery",
    "Kafka",
    "Limits",
    "Message",
    "NatsJetStream",
    "Publish",
    "PublishFailed",
    "PublishRejected",
    "RabbitMQ",
    "Target",
    "Webhook",
    "destination_of",
    "publish",
    "publish_many",
    "verify_webhook",
]
