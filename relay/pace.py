"""How many jobs a relay claims at once: as many as its handlers will finish in a moment.

Each claim commits, whatever its size, and the database's work per job falls as claims grow
(`python -m bench.phases`: 21 µs of database CPU a job in claims of 100, 14 µs in claims of
500), so a backlog is drained fastest in large claims. But a job claimed ahead waits in this
process, where no other relay can take it: claiming 500 jobs that each take a second would
keep them from idle relays for half a minute. So the claim size follows the pace at which
this process finishes jobs: about HORIZON seconds of it, never fewer than its handler
threads, never more than ``claim_batch``. At a trickle the size does not matter: a claim
takes what is ready.
"""

from __future__ import annotations

import time

#: Seconds of the handlers' recent pace that one claim takes ahead.
HORIZON = 0.1
#: Seconds over which the pace is measured, and how much each new measure counts.
WINDOW = 0.25
WEIGHT = 0.5
#: Seconds after which the first moments' pace is used, before a whole window is measured.
FIRST_MEASURE = 0.02


class Pace:
    def __init__(self, floor: int, ceiling: int) -> None:
        self._floor = max(1, min(floor, ceiling))
        self._ceiling = ceiling
        self._rate = 0.0  # jobs a second, smoothed
        self._window_started = time.monotonic()
        self._window_first = 0

    def limit(self, finished: int) -> int:
        """How many jobs the next claim may take, ``finished`` being how many jobs this
        process has finished so far (completed, failed or given up)."""
        now = time.monotonic()
        elapsed = now - self._window_started
        rate = self._rate
        if elapsed >= WINDOW:
            measured = (finished - self._window_first) / elapsed
            rate = measured if self._rate == 0.0 else WEIGHT * measured + (1 - WEIGHT) * rate
            self._rate = rate
            self._window_started, self._window_first = now, finished
        elif rate == 0.0 and elapsed >= FIRST_MEASURE:
            # Nothing measured yet: what the first moments show, so that a backlog of fast
            # jobs is not claimed a few at a time for a whole window.
            rate = (finished - self._window_first) / elapsed
        return max(self._floor, min(self._ceiling, int(rate * HORIZON)))
