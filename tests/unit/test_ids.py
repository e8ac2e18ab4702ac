"""Job ids are UUIDv7 (RFC 9562): time ordered, strictly increasing within a process."""

from __future__ import annotations

import itertools
import threading
import time
import uuid

import pytest

from outbox.ids import uuid7, uuid7_batch


def _millis(value: uuid.UUID) -> int:
    return value.int >> 80


def _counter(value: uuid.UUID) -> int:
    return (value.int >> 64) & 0xFFF


def test_uuid7_has_version_7_and_the_rfc_variant() -> None:
    made = uuid7()
    assert made.version == 7
    assert made.variant == uuid.RFC_4122


def test_every_uuid_of_a_batch_has_version_7_and_the_rfc_variant() -> None:
    for made in uuid7_batch(1000):
        assert made.version == 7
        assert made.variant == uuid.RFC_4122


def test_uuid7_is_an_ordinary_uuid() -> None:
    made = uuid7()
    assert uuid.UUID(str(made)) == made
    assert uuid.UUID(bytes=made.bytes) == made
    assert hash(made) == hash(uuid.UUID(int=made.int))
    assert made.is_safe is uuid.SafeUUID.unknown


def test_embedded_timestamp_is_the_current_millisecond() -> None:
    before = time.time() * 1000
    made = uuid7()
    after = time.time() * 1000
    # A batch that overflowed the counter may have moved the clock a few ms ahead.
    assert before - 1 <= _millis(made) <= after + 50


def test_timestamps_of_a_large_batch_stay_close_to_now() -> None:
    before = time.time() * 1000
    made = uuid7_batch(20_000)
    after = time.time() * 1000
    assert before - 1 <= _millis(made[0])
    assert _millis(made[-1]) <= after + 50


def test_consecutive_uuids_strictly_increase() -> None:
    made = [uuid7() for _ in range(20_000)]
    assert all(a < b for a, b in itertools.pairwise(made))


def test_a_batch_strictly_increases_beyond_4096_in_one_millisecond() -> None:
    made = uuid7_batch(10_000)
    assert all(a < b for a, b in itertools.pairwise(made))
    # 10,000 ids cannot all fit a 12-bit counter: some millisecond overflowed into the next.
    assert len({_millis(u) for u in made}) >= 2


def test_counter_overflow_moves_to_the_next_millisecond_not_back() -> None:
    made = uuid7_batch(10_000)
    for a, b in itertools.pairwise(made):
        if _millis(a) == _millis(b):
            assert _counter(b) == _counter(a) + 1
        else:
            assert _millis(b) > _millis(a)


def test_batches_continue_where_the_last_one_ended() -> None:
    made: list[uuid.UUID] = []
    for size in (1, 5000, 3, 4097, 1, 0, 2, 8000):
        made.extend(uuid7_batch(size))
        made.append(uuid7())
    assert all(a < b for a, b in itertools.pairwise(made))


@pytest.mark.parametrize("size", [0, 1, 2, 4096, 4097])
def test_batch_has_exactly_the_requested_size(size: int) -> None:
    assert len(uuid7_batch(size)) == size


def test_uuids_are_unique() -> None:
    made = [u for _ in range(20) for u in uuid7_batch(1000)] + [uuid7() for _ in range(5000)]
    assert len(set(made)) == len(made)


def test_uuids_made_by_many_threads_are_unique_and_each_thread_sees_them_increase() -> None:
    results: list[list[uuid.UUID]] = [[] for _ in range(8)]

    def make(into: list[uuid.UUID]) -> None:
        for _ in range(200):
            into.extend(uuid7_batch(25))

    threads = [threading.Thread(target=make, args=(into,)) for into in results]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [u for made in results for u in made]
    assert len(set(every)) == len(every) == 8 * 200 * 25
    for made in results:
        assert all(a < b for a, b in itertools.pairwise(made))


def test_random_bits_differ_between_uuids_of_one_millisecond() -> None:
    made = uuid7_batch(100)
    assert len({u.int & ((1 << 62) - 1) for u in made}) == 100
