"""Shared fixtures. Integration tests get a database of their own per test session
(one per xdist worker): created, migrated, and dropped at the end. Unit tests touch
none of this."""

from __future__ import annotations

import fcntl
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from outbox.database import create_engine, create_engine_async
from outbox.testing import empty_tables, server_dsn, temporary_database


@pytest.fixture(autouse=True)
def exclusive_service(request: pytest.FixtureRequest) -> Iterator[None]:
    """Tests marked ``exclusive("rabbitmq")`` run one at a time across xdist workers: one of
    them stops the machine's broker for 20 s, and no other test of it may run meanwhile. A
    file lock, held for the test's duration (autouse: taken before its other fixtures)."""
    marker = request.node.get_closest_marker("exclusive")
    if marker is None:
        yield
        return
    path = Path(tempfile.gettempdir()) / f"outbox-tests-{marker.args[0]}.lock"
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def server() -> str:
    """A server that answers: OUTBOX_DSN, else 127.0.0.1:5432, else the embedded one."""
    return server_dsn()


@pytest.fixture(scope="session")
def dsn(server: str) -> Iterator[str]:
    with temporary_database(server) as name:
        yield name


@pytest.fixture(scope="session")
def engine(dsn: str) -> Iterator[sa.Engine]:
    made = create_engine(dsn, pool_size=12, max_overflow=4, pool_pre_ping=True)
    yield made
    made.dispose()


@pytest.fixture
async def async_engine(dsn: str) -> AsyncIterator[AsyncEngine]:
    made = create_engine_async(dsn)
    yield made
    await made.dispose()


@pytest.fixture
def db(engine: sa.Engine) -> sa.Engine:
    """The session's engine over empty outbox tables (TRUNCATE: about 10 ms a test)."""
    started = time.perf_counter()
    with engine.begin() as conn:
        empty_tables(conn)  # every table of outbox.schema, past the append-only triggers
    elapsed = time.perf_counter() - started
    assert elapsed < 5, f"cleaning the tables took {elapsed:.1f}s"
    return engine
