"""Running a relay in-process for a test, and waiting on conditions with deadlines."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from outbox_relay.worker import Worker

import outbox

FAST = {
    "poll_interval": timedelta(seconds=0.2),
    "rescue_interval": timedelta(seconds=0.2),
    "lease": timedelta(seconds=2),
    "shutdown_grace": timedelta(seconds=5),
}


@contextlib.contextmanager
def running_relay(
    registry: outbox.Registry,
    dsn: str,
    *,
    metrics_addr: tuple[str, int] | None = None,
    queue_limits: Mapping[str, int] | None = None,
    **settings: Any,
) -> Iterator[Worker]:
    worker = Worker(
        registry, dsn, outbox.Settings(dsn=dsn, **{**FAST, **settings}),
        metrics_addr=metrics_addr, queue_limits=queue_limits,
    )  # fmt: skip
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(timeout=30)
        assert not thread.is_alive(), "the relay did not stop"


#: Seconds a test waits for history to be sealed. Sealing waits until every transaction that
#: was running has ended, in the whole cluster: a chaos test's stopped relay, mid-transaction
#: in another database of the same server, holds it back for up to its handlers' timeout.
SEALING = 60.0


def wait_for(condition: Callable[[], Any], timeout: float = 15, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def scalar(engine: sa.Engine, sql: str, **params: Any) -> Any:
    with engine.connect() as conn:
        return conn.execute(sa.text(sql), params).scalar()


def live_jobs(engine: sa.Engine) -> int:
    return int(scalar(engine, "SELECT count(*) FROM outbox_jobs"))


def events(engine: sa.Engine, uuid: Any) -> list[str]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT event FROM outbox_history WHERE job_uuid = :u ORDER BY id"), {"u": uuid}
        )
        return [r[0] for r in rows]
