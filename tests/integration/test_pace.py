"""Claims follow the handlers' pace: large while fast handlers drain a backlog, and no
further ahead than the threads when handlers are slow, so idle relays are not starved."""

from __future__ import annotations

import time

import sqlalchemy as sa
from sqlalchemy.orm import Session

import outbox
from tests.integration.relay_harness import live_jobs, running_relay, scalar


def test_a_relay_with_slow_handlers_claims_little_more_than_its_threads(
    db: sa.Engine, dsn: str
) -> None:
    registry = outbox.Registry()

    @registry.handler("slow.job")
    def slow(job: outbox.Job) -> None:
        time.sleep(0.1)

    with Session(db) as session:
        outbox.enqueue_many(session, [outbox.NewJob("slow.job", {}) for _ in range(60)])
        session.commit()
    held = []
    with running_relay(registry, dsn, concurrency=4):
        deadline = time.monotonic() + 30
        while live_jobs(db) and time.monotonic() < deadline:
            held.append(int(scalar(db, "SELECT count(*) FROM outbox_jobs WHERE state = 'running'")))
            time.sleep(0.02)  # the sampling period
    assert live_jobs(db) == 0
    # 4 running, one claim of 4 (the threads) waiting, and a few done whose completion is
    # being written: nothing held for long that another relay could have run. With claims
    # of a fixed 100 the relay held all 60 at once.
    assert max(held) <= 12, held
