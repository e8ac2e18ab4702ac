"""Publishing to Kafka: confluent-kafka's idempotent producer, ``acks=all``.

One producer serves every relay thread. :meth:`Kafka.publish` hands its message to the
producer, which batches what the threads hand it together (``linger.ms``) and sends it
asynchronously; a thread of the target's own polls the producer, and each message's delivery
report wakes the one publish that waits for it. Concurrent publishes therefore share batches
and round trips, never one blocking request per message.

Delivered means acknowledged by all in-sync replicas of the partition (DESIGN section 7); the
report's partition and offset are kept in the job's history. The job key is the message key,
so one key's messages land in one partition, in the order the relay publishes them (G4). The
job uuid travels in the header ``outbox-id`` on every attempt: a re-publish after a lost
completion carries the same id, and the consumer's inbox applies it once. The idempotent
producer removes the duplicates of its own retries within one session; it cannot know of a
re-publish by another relay process, which is what the id is for.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import structlog

from outbox.errors import ConfigurationError
from outbox.publish.target import (
    CLAIM_SIZED,
    ID_HEADER,
    Delivery,
    Limits,
    Message,
    PublishFailed,
    PublishRejected,
    missing_extra,
)
from outbox.storable import encodable
from outbox.validate import positive_seconds

if TYPE_CHECKING:
    from confluent_kafka import KafkaError, Producer
    from confluent_kafka import Message as KafkaMessage

log = structlog.get_logger("outbox.publish")
#: librdkafka's own log lines (a broker connection refused, say) go to this logger, not stderr.
client_log = logging.getLogger("outbox.publish.kafka")
#: Seconds past ``timeout`` that a delivery report may take to come through the poll thread.
REPORT_MARGIN = 5.0

#: Kafka's topic names: letters, digits, '.', '_', '-'; 249 at most; not '.' or '..'.
_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")
#: One bootstrap address: an optional ``protocol://``, a host (or ``[IPv6]``) and a port.
_ADDRESS = re.compile(r"(?:[A-Za-z_]+://)?(\[[0-9A-Fa-f:.]+\]|[^\s:/,\[\]]+):(\d{1,5})")

#: Settings that delivered-means-acknowledged rests on, or that the target sets itself.
_REFUSED = {
    "bootstrap.servers": "give the brokers as the first argument",
    "enable.idempotence": "the producer is always idempotent",
    "acks": "the producer always waits for all in-sync replicas (acks=all)",
    "request.required.acks": "the producer always waits for all in-sync replicas (acks=all)",
    "transactional.id": "the producer is idempotent, not transactional",
    "message.timeout.ms": "use timeout= (seconds)",
    "delivery.timeout.ms": "use timeout= (seconds)",
    "on_delivery": "the target waits for each message's delivery report itself",
    "delivery.report.only.error": "the target waits for each message's delivery report",
    "error_cb": "the target logs the producer's errors itself",
    "logger": "librdkafka logs to the logging logger 'outbox.publish.kafka'",
}

#: Settings the target starts from; the caller's ``config`` overrides them. A relay thread
#: waits for each message's report, so batches fill from concurrent publishes: a short linger
#: (librdkafka's default is 5 ms) keeps each publish's wait near one round trip.
_DEFAULTS: dict[str, str | int | float | bool] = {"linger.ms": 1}

#: Errors for which publishing the same message again cannot succeed: the job ends dead.
_REJECTED = frozenset(
    {
        "MSG_SIZE_TOO_LARGE",
        "_MSG_SIZE_TOO_LARGE",
        "RECORD_LIST_TOO_LARGE",
        "INVALID_RECORD",
        "INVALID_TOPIC_EXCEPTION",
    }
)


class Kafka:
    """A Kafka topic. ``bootstrap`` lists brokers, ``host:port`` separated by commas.

    ``timeout`` (seconds) bounds the wait for one message's delivery report, retries
    included (``message.timeout.ms``): a publish while no broker answers fails within it,
    never hangs. ``config`` holds further librdkafka producer settings
    (``compression_type="zstd"`` is ``compression.type``; pass a dotted name as
    ``**{"linger.ms": 5}``); those that idempotence and ``acks=all`` rest on are refused.
    """

    extra = "kafka"
    batch_size = CLAIM_SIZED

    def __init__(
        self,
        bootstrap: str,
        *,
        topic: str,
        timeout: float = 10.0,
        **config: str | int | float | bool,
    ) -> None:
        try:
            import confluent_kafka
        except ImportError:
            raise missing_extra(self.extra, "confluent-kafka") from None
        self.bootstrap = _check_bootstrap(bootstrap)
        if not isinstance(topic, str) or not _TOPIC_NAME.fullmatch(topic) or topic in (".", ".."):
            raise ConfigurationError(
                f"Kafka topic {topic!r} is not a topic name: 1 to 249 letters, digits, '.', "
                "'_' or '-' (not '.' or '..')"
            )
        self.topic = topic
        if not positive_seconds(timeout, most=300):
            raise ConfigurationError(
                f"Kafka timeout must be a number of seconds above 0, at most 300, not {timeout!r}"
            )
        self.timeout = float(timeout)
        self._config = {**_DEFAULTS, **_check_config(config)}
        _check_client_accepts(confluent_kafka, self._config)
        self._lock = threading.Lock()
        self._producer: Producer | None = None
        self._poller: threading.Thread | None = None
        self._stop = threading.Event()
        #: Set when the producer hit a fatal error: the next publish replaces it.
        self._fatal: KafkaError | None = None

    def __repr__(self) -> str:
        return f"Kafka({self.bootstrap!r}, topic={self.topic!r})"

    def start(self, limits: Limits) -> None:
        """Create the producer and ask the cluster for the topic; a cluster that does not
        answer, or lacks the topic, is logged (publishes fail, and are retried, until it
        answers)."""
        producer = self._current()
        try:
            metadata = producer.list_topics(self.topic, timeout=min(self.timeout, 5.0))
        except Exception as exc:  # KafkaException: the cluster did not answer in time
            log.warning(
                "Kafka cluster did not answer; publishes fail and are retried until it does",
                bootstrap=self.bootstrap, topic=self.topic, error=str(exc),
            )  # fmt: skip
            return
        found = metadata.topics.get(self.topic)
        if found is None or found.error is not None:
            log.warning(
                "Kafka topic is not on the cluster; publishes fail and are retried until it is",
                bootstrap=self.bootstrap, topic=self.topic,
                error=str(found.error) if found is not None else "absent",
            )  # fmt: skip

    def publish(self, message: Message) -> Delivery:
        """Produce one message and wait for its delivery report. Thread-safe."""
        answer = self._wait(self._send(self._current(), message), self._report_deadline())
        if isinstance(answer, Exception):
            raise answer
        return answer

    def publish_many(self, messages: Sequence[Message]) -> list[Delivery | Exception]:
        """Produce every message, then wait for their delivery reports together: one
        round trip's wait for the lot, not one each. Answers at their messages' positions."""
        producer = self._current()
        sent: list[_Report | Exception] = []
        for message in messages:
            try:
                sent.append(self._send(producer, message))
            except (PublishFailed, PublishRejected) as exc:
                sent.append(exc)
        # One deadline for the call's reports: waited one after another, each with a deadline
        # of its own, a call of 500 could take 500 times as long if reports stopped coming.
        deadline = self._report_deadline()
        return [self._wait(report, deadline) for report in sent]

    def _send(self, producer: Producer, message: Message) -> _Report:
        """Hand one message to the producer; its report arrives through the poll thread."""
        from confluent_kafka import KafkaException

        report = _Report()
        headers: list[tuple[str, str | bytes | None]] = [
            (name, value.encode()) for name, value in message.wire_headers().items()
        ]
        headers += [(ID_HEADER, message.id.encode()), ("content-type", b"application/json")]
        key = message.key.encode() if message.key is not None else None
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                producer.produce(
                    self.topic, message.body, key, headers=headers, on_delivery=report.resolve
                )
                return report
            except BufferError:
                # The producer's queue is full: wait for room as long as a report may take.
                if time.monotonic() > deadline:
                    raise PublishFailed(
                        f"the Kafka producer's queue stayed full for {self.timeout:g}s"
                    ) from None
                time.sleep(0.005)
            except KafkaException as exc:
                raise self._outcome(exc.args[0]) from None

    def _report_deadline(self) -> float:
        """When reports of messages sent now are late (monotonic): the producer gives up at
        message.timeout.ms and reports it; the margin covers the report's way through the
        poll thread."""
        return time.monotonic() + self.timeout + REPORT_MARGIN

    def _wait(self, report: _Report | Exception, deadline: float) -> Delivery | Exception:
        """The answer of a message sent: its delivery, or the failure to raise for it."""
        if isinstance(report, Exception):
            return report
        if not report.done.wait(max(0.0, deadline - time.monotonic())):
            late = self.timeout + REPORT_MARGIN
            return PublishFailed(f"no delivery report from Kafka within {late:g}s")
        if report.error is not None:
            return self._outcome(report.error)
        return Delivery(
            "delivered", f"{self.topic} partition {report.partition} offset {report.offset}"
        )

    def close(self) -> None:
        """Deliver what is in flight (up to ``timeout``), then stop the producer; messages
        still undelivered are reported failed to their publishes."""
        with self._lock:
            producer, poller, self._producer, self._poller = (
                self._producer,
                self._poller,
                None,
                None,
            )
            self._stop.set()
        if poller is not None:
            poller.join()
        if producer is not None:
            _retire(producer, self.timeout)

    def _current(self) -> Producer:
        """The producer, created when none runs, or anew after a fatal error."""
        with self._lock:
            if self._producer is not None and self._fatal is None:
                return self._producer
            old, old_poller, fatal = self._producer, self._poller, self._fatal
            if old is not None:
                log.warning(
                    "Kafka producer replaced after a fatal error",
                    topic=self.topic, error=fatal.str() if fatal is not None else "",
                )  # fmt: skip
                self._stop.set()
            self._stop = threading.Event()
            self._fatal = None
            self._producer = self._new_producer()
            self._poller = threading.Thread(
                target=_poll, args=(self._producer, self._stop, self._on_error),
                name=f"outbox-kafka-{self.topic}", daemon=True,
            )  # fmt: skip
            self._poller.start()
            producer = self._producer
        if old is not None:
            if old_poller is not None:
                old_poller.join()
            _retire(old, 0)
        return producer

    def _new_producer(self) -> Producer:
        from confluent_kafka import Producer

        return Producer(
            {
                **self._config,
                "bootstrap.servers": self.bootstrap,
                "enable.idempotence": True,
                "acks": "all",
                "message.timeout.ms": int(self.timeout * 1000),
                "error_cb": self._on_error,
                "logger": client_log,
            }
        )

    def _on_error(self, error: KafkaError) -> None:
        """A producer-wide error (every broker down, say): librdkafka retries by itself; a
        fatal one means the producer must be replaced."""
        from confluent_kafka import KafkaError

        if error.fatal():
            if self._fatal is not None:
                return
            self._fatal = error
            log.error("Kafka producer failed; the next publish replaces it", topic=self.topic,
                      error=error.str())  # fmt: skip
        elif error.code() == KafkaError._ALL_BROKERS_DOWN:
            # Each connection's failure is in librdkafka's own log; this says it is all.
            log.warning("no Kafka broker answers; publishes fail and are retried",
                        topic=self.topic, bootstrap=self.bootstrap)  # fmt: skip

    def _outcome(self, error: KafkaError) -> PublishFailed | PublishRejected:
        from confluent_kafka import KafkaError

        if error.fatal() or error.code() == KafkaError._FATAL:
            self._fatal = self._fatal or error
        if (fatal := self._fatal) is not None:  # its messages are purged, or refused
            return PublishFailed(f"the Kafka producer failed and is replaced: {fatal.str()}")
        if error.name() in _REJECTED:
            return PublishRejected(f"Kafka refused the message: {error.name()}: {error.str()}")
        return PublishFailed(f"Kafka did not take the message: {error.name()}: {error.str()}")


class _Report:
    """One message's delivery report, set by the poll thread."""

    __slots__ = ("done", "error", "offset", "partition")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.error: KafkaError | None = None
        self.partition: int | None = None
        self.offset: int | None = None

    def resolve(self, error: KafkaError | None, message: KafkaMessage) -> None:
        self.error = error
        if error is None:
            self.partition, self.offset = message.partition(), message.offset()
        self.done.set()


def _poll(
    producer: Producer, stop: threading.Event, on_fatal: Callable[[KafkaError], None]
) -> None:
    """Serve delivery reports (and logs, errors) until the target closes or replaces it."""
    from confluent_kafka import KafkaException

    while not stop.is_set():
        try:
            producer.poll(0.05)
        except KafkaException as exc:  # the producer failed for good (confluent raises it here)
            on_fatal(exc.args[0])
            stop.wait(0.05)


def _retire(producer: Producer, timeout: float) -> None:
    """Deliver what the producer holds within ``timeout``, then fail the rest: purging
    reports each remaining message as failed to the publish waiting for it."""
    if producer.flush(timeout) > 0:
        producer.purge()
        producer.flush(0)


def _check_bootstrap(bootstrap: object) -> str:
    if not isinstance(bootstrap, str) or not bootstrap.strip():
        raise ConfigurationError(
            f"Kafka bootstrap must list brokers as 'host:port', comma-separated, not {bootstrap!r}"
        )
    for address in bootstrap.split(","):
        match = _ADDRESS.fullmatch(address.strip())
        if match is None or not 0 < int(match.group(2)) < 65536:
            raise ConfigurationError(
                f"Kafka bootstrap address {address.strip()!r} is not 'host:port' (in {bootstrap!r})"
            )
    return ",".join(address.strip() for address in bootstrap.split(","))


def _check_config(config: Mapping[str, object]) -> dict[str, str | int | float | bool]:
    """The caller's librdkafka settings under their dotted names."""
    checked: dict[str, str | int | float | bool] = {}
    for given, value in config.items():
        name = given if "." in given else given.replace("_", ".")
        if name in _REFUSED or given in _REFUSED:
            raise ConfigurationError(
                f"Kafka setting {given!r} cannot be set: {_REFUSED.get(name, _REFUSED.get(given))}"
            )
        if not isinstance(value, str | int | float | bool):
            raise ConfigurationError(
                f"Kafka setting {given!r} must be a string, number or boolean, not "
                f"{type(value).__name__}"
            )
        if isinstance(value, str) and not encodable(value):
            raise ConfigurationError(f"Kafka setting {given!r} is not valid text: {value[:40]!r}")
        checked[name] = value
    return checked


def _check_client_accepts(client: Any, config: Mapping[str, object]) -> None:
    """Let librdkafka judge the settings' names and values now, not when the relay starts:
    a producer without brokers connects to nothing and is gone at once."""
    try:
        client.Producer({**config, "logger": _SILENT}).flush(0)
    except (client.KafkaException, ValueError, TypeError) as exc:
        error = exc.args[0] if exc.args else exc
        reason = error.str() if isinstance(error, client.KafkaError) else str(error)
        raise ConfigurationError(f"Kafka producer settings refused: {reason}") from None


#: Swallows the check's warning that no broker is configured.
_SILENT = logging.getLogger("outbox.publish.kafka.check")
_SILENT.addHandler(logging.NullHandler())
_SILENT.propagate = False

__all__ = ["Kafka"]
