"""Handler for the latency benchmark: ``outbox relay --app bench.latency:registry``.

The producer (``python -m bench.ours --workload latency``) notes the time right after
each enqueue's commit returns; this handler, a plain one like the peers' no-op tasks,
notes the time it starts, a line per job in a file of its process under
``$BENCH_LATENCY_DIR``. The latency of a job is the difference: commit to handler
start, through NOTIFY, claim and dispatch.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from uuid import UUID

import outbox

TYPE = "bench.latency"

registry = outbox.Registry()
_lock = threading.Lock()


@registry.handler(TYPE)
def record(job: outbox.Job) -> None:
    """Appends ``<uuid> <Unix time>`` when it starts."""
    seen = time.time()
    folder = Path(os.environ["BENCH_LATENCY_DIR"])
    with _lock, (folder / f"seen-{os.getpid()}.txt").open("a") as out:
        out.write(f"{job.uuid} {seen}\n")


def read(folder: Path) -> dict[UUID, float]:
    """Every job's start time, from the files of every relay process."""
    seen: dict[UUID, float] = {}
    for path in folder.glob("seen-*.txt"):
        for line in path.read_text().splitlines():
            uuid, at = line.split()
            seen[UUID(uuid)] = float(at)
    return seen
