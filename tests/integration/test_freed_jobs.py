"""A relay frees each job's objects as soon as the job is done, by reference counting, not
at the cyclic collector's next pass: at thousands of jobs a second, jobs kept for the
collector were about 10 MiB of a draining relay's memory (docs/benchmarks.md)."""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

import outbox
from tests.integration.helpers import count
from tests.integration.relay_harness import running_relay, wait_for

#: Objects of a job's passage through a relay; none may be left in a reference cycle.
PER_JOB = {"Job", "Running", "Group", "Future", "Outcome"}


def plain(job: outbox.Job) -> None:
    pass


def with_session(job: outbox.Job, session: Session) -> None:
    session.execute(sa.text("SELECT 1"))


@pytest.fixture
def collector_paused() -> Iterator[Callable[[], set[str]]]:
    """Automatic collection off; the function returns the type names of what a collection
    would free now."""
    gc.disable()

    def garbage() -> set[str]:
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            gc.collect()
            return {type(thing).__qualname__ for thing in gc.garbage}
        finally:
            gc.set_debug(0)
            gc.garbage.clear()

    try:
        yield garbage
    finally:
        gc.enable()


@pytest.mark.parametrize("handler", [plain, with_session], ids=["plain", "session"])
def test_a_finished_job_leaves_nothing_for_the_cyclic_collector(
    db: sa.Engine, dsn: str, handler: Callable[..., None], collector_paused: Callable[[], set[str]]
) -> None:
    registry = outbox.Registry()
    registry.register("a.freed", handler)
    with running_relay(registry, dsn):
        # The relay freezes its start-up heap and turns collection on as it starts.
        wait_for(lambda: count(db, "outbox_relays") > 0, what="the relay to start")
        gc.disable()
        collector_paused()  # what the start left behind
        with Session(db) as session:
            outbox.enqueue_many(session, [outbox.NewJob("a.freed", {}) for _ in range(60)])
            session.commit()
        wait_for(lambda: count(db, "outbox_jobs") == 0, what="the 60 jobs to complete")
    assert collector_paused().isdisjoint(PER_JOB)
