"""Through PgBouncer in transaction pooling: applications enqueue, relays refuse to start.

The tests that need one run a real PgBouncer, started here on a free port of 127.0.0.1 in
front of the test server, with a configuration of its own; they are skipped only where no
pgbouncer binary exists (Debian package ``pgbouncer``; ``.ci/run`` installs it).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import pwd
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result
from outbox_relay import preflight
from outbox_relay.worker import Worker
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

import outbox
from outbox.bulk import COPY_THRESHOLD
from outbox.cli import cli
from outbox.database import create_engine, create_engine_async, libpq_dsn, sqlalchemy_url
from outbox.enqueue import SERVER_PID
from outbox.testing import temporary_database
from tests.integration.helpers import idle_marks, relay_idle


def _find_pgbouncer() -> str | None:
    found = shutil.which("pgbouncer")
    for candidate in (found, "/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


PGBOUNCER = _find_pgbouncer()
ROOT = Path(__file__).resolve().parents[2]
STARTUP_DEADLINE = 15.0


@dataclasses.dataclass
class Bouncer:
    """A PgBouncer process and the DSN of one database behind it."""

    process: subprocess.Popen[bytes]
    port: int
    user: str
    log: Path

    def dsn(self, database: str) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _answers(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
        return True
    return False


@contextlib.contextmanager
def pgbouncer(
    folder: Path, server: str, *, pool_mode: str = "transaction", **settings: str
) -> Iterator[Bouncer]:
    """PgBouncer in front of ``server`` (any database, passed through), until the block ends;
    ``settings`` are more lines of its [pgbouncer] section."""
    if PGBOUNCER is None:
        pytest.skip("no pgbouncer binary (install the Debian package pgbouncer; .ci/run does)")
    url = sqlalchemy_url(server)
    host = url.host or str(url.query.get("host") or "127.0.0.1")
    user = url.username or "postgres"
    target = f"host={host} port={url.port or 5432}"
    if url.password:
        target += f" user={user} password={url.password}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "userlist.txt").write_text(f'"{user}" ""\n')
    log = folder / "pgbouncer.log"
    for _ in range(3):  # a free port can be taken between the probe and the bind
        port = _free_port()
        config = folder / "pgbouncer.ini"
        config.write_text(
            "[databases]\n"
            f"* = {target}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {folder / 'userlist.txt'}\n"
            f"pool_mode = {pool_mode}\n"
            "max_client_conn = 200\n"
            "default_pool_size = 20\n"
            + "".join(f"{name} = {value}\n" for name, value in settings.items())
        )
        command = [PGBOUNCER, str(config)]
        if os.geteuid() == 0:  # PgBouncer will not run as root; it reads its files first
            command[1:1] = ["-u", _unprivileged_user()]
        with log.open("ab") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        bouncer = Bouncer(process, port, user, log)
        deadline = time.monotonic() + STARTUP_DEADLINE
        while process.poll() is None and not _answers(port) and time.monotonic() < deadline:
            time.sleep(0.05)
        if process.poll() is None and _answers(port):
            break
        bouncer.stop()
    else:
        pytest.fail(f"pgbouncer did not start:\n{log.read_text()}")
    try:
        yield bouncer
    finally:
        bouncer.stop()


def _unprivileged_user() -> str:
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name).pw_name
    pytest.skip("pgbouncer refuses to run as root and no unprivileged user exists")


@pytest.fixture(scope="module")
def direct(server: str) -> Iterator[str]:
    """A migrated database of this module's own (its settings are changed by some tests)."""
    with temporary_database(server, prefix="outbox_pgbouncer") as dsn:
        yield dsn


@pytest.fixture(scope="module")
def transaction_pooled(
    server: str, direct: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The DSN of ``direct`` through PgBouncer in transaction pooling."""
    with pgbouncer(tmp_path_factory.mktemp("pgbouncer"), server) as bouncer:
        yield bouncer.dsn(str(sa.make_url(direct).database))


@pytest.fixture
def direct_engine(direct: str) -> Iterator[sa.Engine]:
    engine = create_engine(direct, poolclass=sa.NullPool)
    with engine.begin() as conn:
        conn.execute(sa.text("SET LOCAL session_replication_role = replica"))
        conn.execute(sa.text("TRUNCATE outbox_jobs, outbox_history, outbox_idempotency"))
    yield engine
    engine.dispose()


def _count(engine: sa.Engine, table: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one())


# -- applications: enqueue through transaction pooling ------------------------------------


def _from_threads(tasks: int, task: Callable[[int], None], threads: int = 8) -> list[str]:
    """Run ``task(0)`` to ``task(tasks - 1)`` on ``threads`` threads; the failures, a line each."""
    work: queue.SimpleQueue[int] = queue.SimpleQueue()
    for n in range(tasks):
        work.put(n)
    failures: list[str] = []
    start = threading.Barrier(threads)

    def client() -> None:
        start.wait(timeout=30)
        while True:
            try:
                n = work.get_nowait()
            except queue.Empty:
                return
            try:
                task(n)
            except Exception as exc:
                failures.append(str(exc).splitlines()[0])

    running = [threading.Thread(target=client) for _ in range(threads)]
    for thread in running:
        thread.start()
    for thread in running:
        thread.join(timeout=60)
    assert not any(t.is_alive() for t in running), "an enqueue thread hung"
    return failures


def test_threaded_enqueues_through_transaction_pooling_all_commit(
    transaction_pooled: str, direct_engine: sa.Engine
) -> None:
    """An application's engine at its defaults: psycopg would prepare the enqueue statement
    after five runs on a connection, and a later transaction lands on another server."""
    engine = create_engine(transaction_pooled, pool_size=8)

    def enqueue(n: int) -> None:
        with Session(engine) as session:
            outbox.enqueue(session, "pgbouncer.one", {"n": n}, key=f"k{n % 5}")
            session.commit()

    try:
        failures = _from_threads(100, enqueue)
    finally:
        engine.dispose()
    assert failures == [], f"{len(failures)} of 100 enqueues failed: {failures[:3]}"
    assert _count(direct_engine, "outbox_jobs") == 100
    assert _count(direct_engine, "outbox_history") == 100


def test_enqueue_through_transaction_pooling_wakes_an_idle_relay_and_leaves_no_lock(
    transaction_pooled: str, direct: str, direct_engine: sa.Engine
) -> None:
    """Whether a relay is idle is read from a session lock that each enqueue statement tries
    and releases within itself: through a pooler, no server session keeps it."""
    engine = create_engine(transaction_pooled, pool_size=4)

    def enqueue(n: int) -> None:
        with Session(engine) as session:
            outbox.enqueue(session, "pgbouncer.woken", {"n": n}, queue=f"q{n}")
            session.commit()

    try:
        with psycopg.connect(libpq_dsn(direct), autocommit=True) as listener:
            listener.execute("LISTEN outbox_jobs")
            with relay_idle(direct):
                assert _from_threads(20, enqueue) == []
                woken = {n.payload for n in listener.notifies(timeout=10, stop_after=20)}
            assert woken == {f"q{n}" for n in range(20)}
            assert _from_threads(20, enqueue) == []  # no relay idle: their IDLE tries succeed
        assert idle_marks(direct_engine) == 0
    finally:
        engine.dispose()


@pytest.mark.parametrize("size", [3, COPY_THRESHOLD])
def test_threaded_enqueue_many_through_transaction_pooling_all_commit(
    transaction_pooled: str, direct_engine: sa.Engine, size: int
) -> None:
    """Both paths: one statement below COPY_THRESHOLD; savepoint, statement, COPY from it."""
    engine = create_engine(transaction_pooled, pool_size=8)

    def enqueue_many(n: int) -> None:
        with Session(engine) as session:
            jobs = [outbox.NewJob("pgbouncer.many", {"n": n, "i": i}) for i in range(size)]
            assert len(outbox.enqueue_many(session, jobs)) == size
            session.commit()

    try:
        failures = _from_threads(64, enqueue_many)
    finally:
        engine.dispose()
    assert failures == [], f"{len(failures)} of 64 batches failed: {failures[:3]}"
    assert _count(direct_engine, "outbox_jobs") == 64 * size


async def test_concurrent_async_sessions_enqueue_through_transaction_pooling(
    transaction_pooled: str, direct_engine: sa.Engine
) -> None:
    engine = create_engine_async(transaction_pooled, pool_size=8)

    async def client(c: int) -> None:
        for n in range(8):
            async with AsyncSession(engine) as session:
                await outbox.enqueue(session, "pgbouncer.async", {"c": c, "n": n})
                await session.commit()
        for _ in range(2):
            async with AsyncSession(engine) as session:
                many = [outbox.NewJob("pgbouncer.async", {"c": c, "i": i}) for i in range(size)]
                await outbox.enqueue_many(session, many)
                await session.commit()

    size = COPY_THRESHOLD
    try:
        await asyncio.gather(*(client(c) for c in range(8)))
    finally:
        await engine.dispose()
    assert _count(direct_engine, "outbox_jobs") == 8 * (8 + 2 * size)


def test_direct_connections_keep_the_enqueue_statement_prepared(
    direct_engine: sa.Engine, direct: str
) -> None:
    """Not preparing is for pooled connections only: on a direct one, psycopg prepares the
    statement as usual, and the server plans it once per connection, not once per call."""
    engine = create_engine(direct, pool_size=1)
    probes: list[str] = []
    sa.event.listen(engine, "before_cursor_execute", lambda *a: probes.append(a[2]))
    try:
        with Session(engine) as session:
            for n in range(5):  # below psycopg's prepare_threshold: nothing to ask
                outbox.enqueue(session, "pgbouncer.direct", {"n": n})
            assert SERVER_PID not in probes
            for n in range(5, 12):
                outbox.enqueue(session, "pgbouncer.direct", {"n": n})
            prepared = session.execute(
                sa.text(
                    "SELECT count(*) FROM pg_prepared_statements "
                    "WHERE statement LIKE '%INSERT INTO outbox_jobs%'"
                )
            ).scalar_one()
            session.commit()
        assert prepared == 1
        assert probes.count(SERVER_PID) == 1  # asked once for the connection
        with Session(engine) as session:  # the same connection, from the pool
            outbox.enqueue(session, "pgbouncer.direct", {"n": 12})
            session.commit()
        assert probes.count(SERVER_PID) == 1
    finally:
        engine.dispose()
    assert _count(direct_engine, "outbox_jobs") == 13


# -- relays: refused at start through transaction pooling ----------------------------------


def _database(dsn: str) -> str:
    return str(sa.make_url(dsn).database)


def _relay_cli(dsn: str) -> Result:
    args = ["--dsn", dsn, "relay", "--app", "tests.chaos.app:registry", "--metrics-addr", "off"]
    return CliRunner().invoke(cli, args)


def test_relay_refuses_pgbouncer_that_refuses_its_startup_options(
    server: str, direct: str, tmp_path: Path
) -> None:
    with pgbouncer(tmp_path, server) as bouncer:
        result = _relay_cli(bouncer.dsn(_database(direct)))
    assert result.exit_code == 2, result.output
    assert "Error: the relay cannot start" in result.output
    assert "unsupported startup parameter: options" in result.output
    assert "PgBouncer" in result.output
    assert "transaction pooling" in result.output
    assert "at PostgreSQL itself" in result.output  # what to do


def test_relay_refuses_pgbouncer_that_ignores_its_startup_options(
    server: str, direct: str, tmp_path: Path
) -> None:
    with pgbouncer(tmp_path, server, ignore_startup_parameters="options") as bouncer:
        result = _relay_cli(bouncer.dsn(_database(direct)))
    assert result.exit_code == 2, result.output
    assert "Error: the relay cannot start" in result.output
    assert "asked for idle_in_transaction_session_timeout=30000" in result.output
    assert "idle_in_transaction_session_timeout=0" in result.output
    assert "ignore_startup_parameters" in result.output
    assert "PgBouncer" in result.output


@pytest.fixture
def timeout_set_server_side(direct: str) -> Iterator[outbox.Settings]:
    """The database sets what the relay's startup options ask for, as a relay's role could
    behind a pooler that drops them; the relay's settings come back."""
    settings = outbox.Settings()
    [(name, value)] = preflight.startup_settings(settings).items()
    engine = create_engine(direct, poolclass=sa.NullPool, isolation_level="AUTOCOMMIT")
    database = _database(direct)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(f"ALTER DATABASE \"{database}\" SET {name} = '{value}ms'")
        yield settings
    finally:
        with engine.connect() as conn:
            conn.exec_driver_sql(f'ALTER DATABASE "{database}" RESET {name}')
        engine.dispose()


@pytest.mark.parametrize(
    ("server_round_robin", "found"),
    [("0", "was seen by another connection"), ("1", "was gone in its next transaction")],
)
def test_relay_preflight_refuses_transaction_pooling_by_session_state(
    server: str,
    direct: str,
    tmp_path: Path,
    timeout_set_server_side: outbox.Settings,
    server_round_robin: str,
    found: str,
) -> None:
    """Options dropped but the setting right anyway: the third question still sees the pooling.
    PgBouncer reuses its last server session first (a leak to the next client), or with
    server_round_robin its oldest (a loss for the client that set it)."""
    bouncer_settings = {"ignore_startup_parameters": "options"}
    bouncer_settings["server_round_robin"] = server_round_robin
    with pgbouncer(tmp_path, server, **bouncer_settings) as bouncer:
        dsn = bouncer.dsn(_database(direct))
        _warm(dsn, sessions=3)
        with pytest.raises(preflight.SessionNotKept) as refused:
            preflight.check(dsn, timeout_set_server_side)
    assert found in str(refused.value)
    assert "PgBouncer in transaction pooling" in str(refused.value)


def _warm(dsn: str, sessions: int) -> None:
    """Have the pool open ``sessions`` server sessions, all idle when this returns."""
    clients = [psycopg.connect(dsn) for _ in range(sessions)]
    try:
        for client in clients:  # each holds a transaction open, so each takes a session
            client.execute("SELECT 1", prepare=False)
        for client in clients:  # ended cleanly, the sessions go back to the pool
            client.commit()
    finally:
        for client in clients:
            client.close()


def test_relay_preflight_accepts_session_pooling_with_the_timeout_set_server_side(
    server: str, direct: str, tmp_path: Path, timeout_set_server_side: outbox.Settings
) -> None:
    pooling = {"pool_mode": "session", "ignore_startup_parameters": "options"}
    with pgbouncer(tmp_path, server, **pooling) as bouncer:
        preflight.check(bouncer.dsn(_database(direct)), timeout_set_server_side)


def test_relay_preflight_passes_quickly_on_a_direct_connection(direct: str) -> None:
    started = time.perf_counter()
    preflight.check(direct, outbox.Settings())
    elapsed = time.perf_counter() - started
    assert elapsed < 2.0, f"the preflight took {elapsed:.2f}s on a direct connection"


def test_relay_preflight_lets_an_unreachable_database_say_so(direct: str) -> None:
    closed = sqlalchemy_url(direct).set(host="127.0.0.1", port=_free_port())
    with pytest.raises(psycopg.OperationalError, match="refused"):
        preflight.check(closed.render_as_string(hide_password=False), outbox.Settings())


def test_relay_connections_carry_what_the_preflight_asks_for(direct: str) -> None:
    settings = outbox.Settings(dsn=direct, lease=timedelta(seconds=7))
    worker = Worker(outbox.Registry(), direct, settings)
    try:
        for engine in (worker.engine, worker.fast):
            with engine.connect() as conn:
                for name, value in preflight.startup_settings(settings).items():
                    found = conn.exec_driver_sql(
                        "SELECT setting FROM pg_settings WHERE name = %(name)s", {"name": name}
                    ).scalar_one()
                    assert found == value == "7000"
    finally:
        worker.engine.dispose()
        worker.fast.dispose()


def test_relay_starts_on_a_direct_connection(direct: str, tmp_path: Path) -> None:
    log = tmp_path / "relay.log"
    command = [sys.executable, "-m", "outbox", "relay", "--app", "tests.chaos.app:registry"]
    command += ["--metrics-addr", "off", "--log-format", "json"]
    env = {**os.environ, "OUTBOX_DSN": direct}
    with log.open("wb") as out:
        relay = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while "relay started" not in log.read_text() and time.monotonic() < deadline:
            assert relay.poll() is None, f"the relay exited:\n{log.read_text()}"
            time.sleep(0.05)
        assert "relay started" in log.read_text(), log.read_text()
        relay.send_signal(signal.SIGTERM)
        assert relay.wait(timeout=30) == 0, log.read_text()
    finally:
        if relay.poll() is None:
            relay.kill()
            relay.wait(timeout=10)
