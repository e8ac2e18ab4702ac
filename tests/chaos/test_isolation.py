"""A job that crashes its relay process must not take the jobs beside it down (G2, G6)."""

from __future__ import annotations

import signal
from typing import Any

import pytest
import sqlalchemy as sa

import outbox
from tests.chaos.conftest import Relays, effects_per_job, enqueue, wait_for


def trails(engine: sa.Engine, uuids: list[Any]) -> dict[Any, list[tuple[str, str | None]]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT job_uuid, event, reason FROM outbox_history "
                "WHERE job_uuid = ANY(:u) ORDER BY id"
            ),
            {"u": uuids},
        )
        found: dict[Any, list[tuple[str, str | None]]] = {u: [] for u in uuids}
        for uuid, event, reason in rows:
            found[uuid].append((event, reason))
        return found


@pytest.mark.timeout(300)
def test_segfaulting_jobs_end_dead_alone_and_every_job_beside_them_succeeds(
    chaos_db: sa.Engine, relays: Relays
) -> None:
    jobs = [outbox.NewJob("chaos.effect", {"seq": i}) for i in range(300)]
    for at in (40, 150, 260):  # among the others, so that they are claimed together
        jobs.insert(at, outbox.NewJob("chaos.segfault", {}))
    handles = enqueue(chaos_db, jobs)
    poison = [h.uuid for h, j in zip(handles, jobs, strict=True) if j.type == "chaos.segfault"]
    ordinary = [h.uuid for h, j in zip(handles, jobs, strict=True) if j.type == "chaos.effect"]
    supervisor = relays.start("--processes", "2")

    def settled() -> bool:
        with chaos_db.connect() as conn:
            left = conn.execute(sa.text("SELECT uuid, state FROM outbox_jobs")).all()
        return sorted(u for u, _ in left) == sorted(poison) and all(s == "dead" for _, s in left)

    try:
        wait_for(settled, 240, "the poison jobs to end dead and every other job to succeed")
    except AssertionError:
        with chaos_db.connect() as conn:
            left = conn.execute(sa.text(
                "SELECT uuid, type, state, attempt, isolated, relay, lease_expires_at - now(), "
                "run_at - now() FROM outbox_jobs ORDER BY id LIMIT 20"
            )).all()  # fmt: skip
        raise AssertionError(f"jobs left: {left}\n{relays.log_tail()}") from None
    assert effects_per_job(chaos_db) == dict.fromkeys(ordinary, 1)
    found = trails(chaos_db, ordinary + poison)
    for uuid in ordinary:
        events = [event for event, _ in found[uuid]]
        assert events.count("succeeded") == 1, found[uuid]
        assert not {"failed", "dead"} & set(events), found[uuid]
    for uuid in poison:
        alone = [r for e, r in found[uuid] if e == "claimed" and r == "runs alone"]
        charged = [r for e, r in found[uuid] if e == "rescued" and r and "attempt counts" in r]
        assert len(alone) == 3, found[uuid]  # max_attempts=3, each crash alone and charged
        assert len(charged) == 3, found[uuid]
        assert found[uuid][-1][0] == "dead"
    supervisor.send_signal(signal.SIGTERM)
    assert supervisor.wait(60) == 0, relays.log_tail()
