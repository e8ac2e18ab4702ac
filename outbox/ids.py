"""Time-ordered job identifiers (UUID version 7, RFC 9562).

Generated client side so that a handle exists before the row does, and time
ordered so that the unique index on them grows at its right edge.
"""

from __future__ import annotations

import os
import threading
import time
import uuid

_lock = threading.Lock()
_UNKNOWN = uuid.SafeUUID.unknown  # an enum member: looked up once, not per UUID
_last_ms = 0
_counter = 0


def uuid7() -> uuid.UUID:
    return uuid7_batch(1)[0]


def uuid7_batch(count: int) -> list[uuid.UUID]:
    """``count`` new UUIDv7s; within one process each value is greater than the last.

    Monotonicity within a millisecond comes from a 12-bit counter seeded at
    random (RFC 9562, section 6.2, method 1); when it would overflow, the
    timestamp is advanced by one millisecond instead.
    """
    global _last_ms, _counter
    noise = os.urandom(8 * count + 2)
    seed = int.from_bytes(noise[-2:], "big") & 0x7FF  # headroom below 0xFFF for increments
    stamps: list[int] = []
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms > _last_ms:
            _last_ms, _counter = ms, seed - 1
        for _ in range(count):
            _counter += 1
            if _counter > 0xFFF:
                _last_ms, _counter = _last_ms + 1, seed
            stamps.append(((_last_ms & 0xFFFF_FFFF_FFFF) << 16) | 0x7000 | _counter)
    made = []
    for i, stamp in enumerate(stamps):
        rand = int.from_bytes(noise[8 * i : 8 * i + 8], "big")
        # 48-bit ms | version 7 | 12-bit counter | variant 0b10 | 62 random bits
        made.append(_uuid((stamp << 64) | 0x8000_0000_0000_0000 | (rand >> 2)))
    return made


def _uuid(value: int) -> uuid.UUID:
    """UUID(int=value) without its argument checks, which cost more than making the value.

    It sets the same two slots as ``UUID.__setstate__`` does when unpickling.
    """
    made = object.__new__(uuid.UUID)
    object.__setattr__(made, "int", value)
    object.__setattr__(made, "is_safe", _UNKNOWN)
    return made
