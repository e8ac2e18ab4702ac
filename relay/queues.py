"""Which queues a relay process takes jobs from, and how many jobs of each it runs at once.

``mail,reports`` names queues whose jobs share the process's handler threads, as they come.
``payments=4,mail=16`` gives each queue a limit of its own: at most that many of its jobs
are held in one relay process (claimed and not yet run, or running), and the process runs
one handler thread per place, the limits' sum. A queue whose handlers are slow or hung then
fills its own places only, and the other queues keep theirs. The limits are per process:
``--processes 3`` runs three times as many of each queue on the machine.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from outbox import validate
from outbox.errors import InvalidJob

#: The most handler threads one relay process runs (--concurrency's range too).
MAX_THREADS = 1024


@dataclass(frozen=True)
class QueueChoice:
    """The queues named, in order; with ``limits``, each queue's most jobs at once."""

    names: tuple[str, ...]
    limits: Mapping[str, int] | None = None

    @property
    def threads(self) -> int | None:
        """Handler threads the limits call for (their sum); None without limits."""
        return None if self.limits is None else sum(self.limits.values())

    def __str__(self) -> str:
        if self.limits is None:
            return ",".join(self.names)
        return ",".join(f"{name}={self.limits[name]}" for name in self.names)


def parse_queues(text: str) -> QueueChoice:
    """``a,b`` or ``a=N,b=N``; raises ValueError with a one-line reason for anything else."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise ValueError(
            "name at least one queue, as in mail,reports, or give each a limit, as in "
            "payments=4,mail=16"
        )
    names: list[str] = []
    limits: dict[str, int] = {}
    for item in items:
        name, equals, limit = (part.strip() for part in item.partition("="))
        if not name:
            raise ValueError(f"{item!r} names no queue; write queue=N, as in payments=4")
        try:
            validate.queue(name)
        except InvalidJob as exc:
            raise ValueError(str(exc).removeprefix("job ")) from None
        if name in names:
            raise ValueError(f"queue {name!r} is named twice")
        names.append(name)
        if equals:
            if not (limit.isascii() and limit.isdigit()) or not 1 <= int(limit) <= MAX_THREADS:
                raise ValueError(
                    f"{item!r}: a queue's limit is a whole number from 1 to {MAX_THREADS}"
                )
            limits[name] = int(limit)
    if limits and len(limits) < len(names):
        bare = next(name for name in names if name not in limits)
        raise ValueError(
            f"queue {bare!r} has no limit while others have one: give every queue a limit "
            f"({bare}=N), or none to share the threads"
        )
    if not limits:
        return QueueChoice(tuple(names))
    if (total := sum(limits.values())) > MAX_THREADS:
        raise ValueError(
            f"the limits add up to {total} handler threads; a relay process runs at most "
            f"{MAX_THREADS}"
        )
    return QueueChoice(tuple(names), limits)
