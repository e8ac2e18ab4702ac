"""The cyclic garbage collector while outbox starts.

Importing SQLAlchemy and psycopg creates some 70,000 objects that live as long as the
process. Each time enough of them have been allocated, the collector walks the ones of the
older generations again, and finds nothing to free: about a sixth of a relay's start went
there (0.45 s to the first claim, 0.37 s with collection paused: bench/startup.py).
Collection is paused around those imports and given back as it was found; the relay keeps
it paused until it freezes its start-up heap (relay/worker.py, settle_garbage_collector).
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def paused() -> Iterator[None]:
    """Automatic collection off for the block, then as it was (a block inside another, or
    a process that keeps it off, leaves it off).

    What the block created is then moved to the oldest generation, where long-lived objects
    end up anyway: given back as they are, the next collection of the youngest generation
    would walk them all at once (19 ms after importing outbox) and the next one of the
    middle generation again (14 ms). ``gc.freeze()`` then ``gc.unfreeze()`` is that move,
    without a walk; it is skipped where the process has frozen objects of its own (a
    pre-forking server's), which unfreezing would give back to the collector.
    """
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            if gc.get_freeze_count() == 0:
                gc.freeze()
                gc.unfreeze()
            gc.enable()
