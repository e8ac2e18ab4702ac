"""librdkafka's mock cluster, driven through its C API: brokers to produce to and consume
from in the test's process, which a test can take down, bring back and make refuse requests.

confluent-kafka creates a mock cluster for a client configured with
``test.mock.num.brokers`` but gives Python neither its address nor its controls; the same
librdkafka library that confluent-kafka bundles exports both (``rdkafka_mock.h``), so the
cluster is made here with ctypes and every client (the target's producer, a relay process,
the test's consumer) reaches it at :attr:`MockCluster.bootstrap`.
"""

from __future__ import annotations

import ctypes
import pathlib
import time
from collections.abc import Iterator

import confluent_kafka

_P = ctypes.c_void_p
#: Kafka's API keys of Produce and InitProducerId requests.
PRODUCE, INIT_PRODUCER_ID = 0, 22


def _library() -> ctypes.CDLL:
    package = pathlib.Path(confluent_kafka.__file__).parent
    found = sorted(package.parent.glob("confluent_kafka.libs/librdkafka*.so*"))
    lib = ctypes.CDLL(str(found[0]) if found else "librdkafka.so.1")
    lib.rd_kafka_conf_new.restype = _P
    lib.rd_kafka_conf_set.argtypes = [
        _P,
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_size_t,
    ]
    lib.rd_kafka_new.restype = _P
    lib.rd_kafka_new.argtypes = [ctypes.c_int, _P, ctypes.c_char_p, ctypes.c_size_t]
    lib.rd_kafka_destroy.argtypes = [_P]
    lib.rd_kafka_mock_cluster_new.restype = _P
    lib.rd_kafka_mock_cluster_new.argtypes = [_P, ctypes.c_int]
    lib.rd_kafka_mock_cluster_destroy.argtypes = [_P]
    lib.rd_kafka_mock_cluster_bootstraps.restype = ctypes.c_char_p
    lib.rd_kafka_mock_cluster_bootstraps.argtypes = [_P]
    lib.rd_kafka_mock_topic_create.argtypes = [_P, ctypes.c_char_p, ctypes.c_int, ctypes.c_int]
    lib.rd_kafka_mock_broker_set_down.argtypes = [_P, ctypes.c_int32]
    lib.rd_kafka_mock_broker_set_up.argtypes = [_P, ctypes.c_int32]
    lib.rd_kafka_mock_push_request_errors_array.argtypes = [
        _P, ctypes.c_int16, ctypes.c_size_t, ctypes.POINTER(ctypes.c_int)
    ]  # fmt: skip
    return lib


class MockCluster:
    """``brokers`` mock brokers (ids 1 to ``brokers``) listening on 127.0.0.1."""

    def __init__(self, brokers: int = 3) -> None:
        self._lib = _library()
        self.brokers = brokers
        errstr = ctypes.create_string_buffer(512)
        # A client of its own hosts the cluster's threads; it connects to nothing.
        conf = self._lib.rd_kafka_conf_new()
        # Quiet: it warns that it has no bootstrap servers, which it needs not.
        self._lib.rd_kafka_conf_set(conf, b"log_level", b"3", errstr, 512)
        self._rk = self._lib.rd_kafka_new(0, conf, errstr, 512)
        assert self._rk, errstr.value.decode()
        self._cluster = self._lib.rd_kafka_mock_cluster_new(self._rk, brokers)
        assert self._cluster, "librdkafka did not create a mock cluster"
        self.bootstrap: str = self._lib.rd_kafka_mock_cluster_bootstraps(self._cluster).decode()

    def create_topic(self, topic: str, partitions: int = 4) -> None:
        replicas = min(3, self.brokers)
        err = self._lib.rd_kafka_mock_topic_create(
            self._cluster, topic.encode(), partitions, replicas
        )
        assert err == 0, f"mock topic {topic!r} not created: error {err}"

    def down(self) -> None:
        """Every broker closes its connections and refuses new ones."""
        for broker in range(1, self.brokers + 1):
            self._lib.rd_kafka_mock_broker_set_down(self._cluster, broker)

    def up(self) -> None:
        for broker in range(1, self.brokers + 1):
            self._lib.rd_kafka_mock_broker_set_up(self._cluster, broker)

    def fail_produce(self, *errors: int) -> None:
        """The next Produce requests (one per error, on any broker) answer these Kafka error
        codes instead of appending."""
        self.fail_requests(PRODUCE, *errors)

    def fail_requests(self, api_key: int, *errors: int) -> None:
        """The next requests of ``api_key`` answer these Kafka error codes."""
        codes = (ctypes.c_int * len(errors))(*errors)
        self._lib.rd_kafka_mock_push_request_errors_array(
            self._cluster, api_key, len(errors), codes
        )

    def close(self) -> None:
        if self._cluster:
            self._lib.rd_kafka_mock_cluster_destroy(self._cluster)
            self._cluster = None
        if self._rk:
            self._lib.rd_kafka_destroy(self._rk)
            self._rk = None


def read_topic(
    bootstrap: str, topic: str, count: int, *, partitions: int = 4, timeout: float = 20
) -> list[confluent_kafka.Message]:
    """The first ``count`` messages of ``topic``, in each partition's order (partitions
    interleaved as they arrive), read from the beginning; fewer if ``timeout`` passes."""
    return list(_consume(bootstrap, topic, partitions, count, timeout))


def _consume(
    bootstrap: str, topic: str, partitions: int, count: int, timeout: float
) -> Iterator[confluent_kafka.Message]:
    consumer = confluent_kafka.Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{time.monotonic_ns()}",
            "enable.auto.commit": False,
        }
    )
    try:
        consumer.assign(
            [
                confluent_kafka.TopicPartition(topic, p, confluent_kafka.OFFSET_BEGINNING)
                for p in range(partitions)
            ]
        )
        deadline = time.monotonic() + timeout
        seen = 0
        while seen < count and time.monotonic() < deadline:
            for message in consumer.consume(min(500, count - seen), 0.2):
                error = message.error()
                assert error is None or error.code() == confluent_kafka.KafkaError._PARTITION_EOF, (
                    error
                )
                if error is None:
                    seen += 1
                    yield message
    finally:
        consumer.close()
