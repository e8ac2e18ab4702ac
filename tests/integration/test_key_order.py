"""G4 at enqueue: jobs of one key get ids in the order their transactions commit."""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

import outbox
from outbox.bulk import COPY_THRESHOLD
from tests.integration.helpers import jobs

PRIOR = sa.text("SELECT coalesce(max(id), 0) FROM outbox_jobs WHERE key = :key AND uuid <> :mine")
MY_ID = sa.text("SELECT id FROM outbox_jobs WHERE uuid = :mine")


def test_concurrent_same_key_enqueues_get_ids_in_commit_order(db: sa.Engine) -> None:
    """Each transaction, once its enqueue returns, must already see every same-key job with
    a lower id as committed: no lower id may commit after it. Without the key lock,
    concurrent inserts take ids in insert order and commit in another."""
    key, threads, per_thread = "account:42", 8, 25
    seen: list[tuple[int, int]] = []
    guard = threading.Lock()

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        with Session(db) as session:
            for _ in range(per_thread):
                mine = outbox.enqueue(session, "ledger.posted", {"seed": seed}, key=key).uuid
                time.sleep(rng.random() / 500)  # hold the transaction open a little
                prior = session.execute(PRIOR, {"key": key, "mine": mine}).scalar_one()
                my_id = session.execute(MY_ID, {"mine": mine}).scalar_one()
                session.commit()
                with guard:
                    seen.append((my_id, prior))

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(worker, range(threads)))
    ids = sorted(my_id for my_id, _ in seen)
    predecessor = {b: a for a, b in zip([0, *ids], ids, strict=False)}
    assert len(ids) == threads * per_thread
    assert all(prior == predecessor[my_id] for my_id, prior in seen)


def test_second_transaction_on_a_key_waits_for_the_first(db: sa.Engine) -> None:
    done = threading.Event()

    def second() -> None:
        with Session(db) as session:
            outbox.enqueue(session, "x.y", {"n": 2}, key="k")
            session.commit()
        done.set()

    with Session(db) as first:
        outbox.enqueue(first, "x.y", {"n": 1}, key="k")
        thread = threading.Thread(target=second)
        thread.start()
        assert not done.wait(0.5), "a same-key enqueue must wait for the open transaction"
        with Session(db) as other:  # other keys are not held up
            outbox.enqueue(other, "x.y", {"n": 3}, key="other")
            other.commit()
        first.commit()
    assert done.wait(10)
    thread.join()
    assert [j.payload["n"] for j in jobs(db, "key = 'k'")] == [1, 2]


@pytest.mark.parametrize("size", [10, COPY_THRESHOLD], ids=["statement", "copy"])
def test_batches_locking_keys_in_opposite_orders_do_not_deadlock(db: sa.Engine, size: int) -> None:
    keys = [f"key-{n}" for n in range(10)]

    def batch(order: list[str]) -> int:
        with Session(db) as session:
            made = outbox.enqueue_many(
                session, [outbox.NewJob("x.y", {}, key=order[n % 10]) for n in range(size)]
            )
            time.sleep(0.05)
            session.commit()
        return len(made)

    with ThreadPoolExecutor(4) as pool:
        sizes = list(pool.map(batch, [keys, keys[::-1], keys, keys[::-1]]))
    assert sizes == [size] * 4
