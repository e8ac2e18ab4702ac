"""Enqueue jobs inside the application's own transaction (G1).

One statement and one round trip for :func:`enqueue` and for batches under
:data:`outbox.bulk.COPY_THRESHOLD` (``outbox/sql/enqueue.sql`` says what it does and
why); larger batches take the COPY path of :mod:`outbox.bulk`.

Behind a connection pooler such as PgBouncer, outbox's statements are never prepared
(see :func:`_behind_pooler`); on a direct connection psycopg prepares the statement
once a connection has run it ``prepare_threshold`` times, as it does any other.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from collections.abc import Coroutine, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeAlias, TypeGuard, cast, overload
from uuid import UUID

import psycopg
import sqlalchemy as sa

from outbox import bulk, locks, validate
from outbox.bulk import Columns, refused
from outbox.errors import InvalidJob, UnknownJobType, UnsupportedSession
from outbox.ids import uuid7_batch
from outbox.registry import Registry
from outbox.settings import Settings, default_settings
from outbox.sql import queries

#: Namespace of outbox's advisory locks (the first of the two int4 lock keys).
KEY_LOCK_CLASS = locks.KEY_CLASS
ENQUEUE = sa.text(queries["enqueue"])
ENQUEUE_ONE = sa.text(queries["enqueue_one"])
#: The server session's pid, to compare with the one the connection was given at start-up.
SERVER_PID = "SELECT pg_backend_pid()"
#: Where a connection's verdict, and the count of enqueues before it, are kept: its
#: ``info`` lives as long as the DBAPI connection.
_POOLED = "outbox.behind_pooler"
_RUNS = "outbox.enqueue_runs"
_AS_IS = contextlib.nullcontext()

if TYPE_CHECKING:
    # Imported only by applications that use them: SQLAlchemy's asyncio extension costs a
    # relay's start-up about 30 ms and its ORM about 55, and a session of either cannot
    # exist unless it was imported.
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_scoped_session
    from sqlalchemy.orm import Session, scoped_session

    AsyncTarget: TypeAlias = AsyncSession | async_scoped_session[AsyncSession] | AsyncConnection
    SyncTarget: TypeAlias = Session | scoped_session[Session] | sa.Connection


def _is_async(session: object) -> TypeGuard[AsyncTarget]:
    asyncio_ext = sys.modules.get("sqlalchemy.ext.asyncio")
    return asyncio_ext is not None and isinstance(
        session,
        (asyncio_ext.AsyncSession, asyncio_ext.async_scoped_session, asyncio_ext.AsyncConnection),
    )


@dataclasses.dataclass(frozen=True, slots=True)
class Enqueued:
    """The handle of an enqueued job."""

    uuid: UUID
    #: True when the idempotency key was already used within its retention window:
    #: no job was created, and ``uuid`` is the job created by the first use (G5).
    duplicate: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class NewJob:
    """One job for :func:`enqueue_many`; the options mean what they mean for :func:`enqueue`."""

    type: str
    payload: Mapping[str, Any]
    key: str | None = None
    idempotency_key: str | None = None
    queue: str | None = None
    priority: int = 0
    run_at: datetime | None = None
    delay: timedelta | float | None = None
    max_attempts: int | None = None


@overload
def enqueue(
    session: SyncTarget,
    type: str,
    payload: Mapping[str, Any],
    *,
    key: str | None = ...,
    idempotency_key: str | None = ...,
    queue: str | None = ...,
    priority: int = ...,
    run_at: datetime | None = ...,
    delay: timedelta | float | None = ...,
    max_attempts: int | None = ...,
    registry: Registry | None = ...,
    settings: Settings | None = ...,
) -> Enqueued: ...
@overload
def enqueue(
    session: AsyncTarget,
    type: str,
    payload: Mapping[str, Any],
    *,
    key: str | None = ...,
    idempotency_key: str | None = ...,
    queue: str | None = ...,
    priority: int = ...,
    run_at: datetime | None = ...,
    delay: timedelta | float | None = ...,
    max_attempts: int | None = ...,
    registry: Registry | None = ...,
    settings: Settings | None = ...,
) -> Coroutine[Any, Any, Enqueued]: ...
def enqueue(
    session: SyncTarget | AsyncTarget,
    type: str,
    payload: Mapping[str, Any],
    *,
    key: str | None = None,
    idempotency_key: str | None = None,
    queue: str | None = None,
    priority: int = 0,
    run_at: datetime | None = None,
    delay: timedelta | float | None = None,
    max_attempts: int | None = None,
    registry: Registry | None = None,
    settings: Settings | None = None,
) -> Enqueued | Coroutine[Any, Any, Enqueued]:
    """Add one job to the transaction of ``session``; it exists only if that transaction commits.

    ``session`` is a SQLAlchemy ``Session``, ``AsyncSession`` (then await the result)
    or ``Connection``. Jobs with the same ``key`` run one at a time in commit order;
    a second use of an ``idempotency_key`` within the retention window creates no
    job and returns ``duplicate=True``. With a ``registry``, the handler's queue and
    ``max_attempts`` are the defaults, and a strict registry refuses unknown types.

    Raises :class:`outbox.InvalidJob` (or a subclass) before anything is written.
    """
    job = NewJob(type, payload, key, idempotency_key, queue, priority, run_at, delay, max_attempts)
    settings = _settings(settings, registry)
    columns = _bind([job], registry, settings)
    if _is_async(session):
        return _first(_execute_async(session, columns, settings))
    return _execute(cast("SyncTarget", session), columns, settings)[0]


@overload
def enqueue_many(
    session: SyncTarget,
    jobs: Iterable[NewJob],
    *,
    registry: Registry | None = ...,
    settings: Settings | None = ...,
) -> list[Enqueued]: ...
@overload
def enqueue_many(
    session: AsyncTarget,
    jobs: Iterable[NewJob],
    *,
    registry: Registry | None = ...,
    settings: Settings | None = ...,
) -> Coroutine[Any, Any, list[Enqueued]]: ...
def enqueue_many(
    session: SyncTarget | AsyncTarget,
    jobs: Iterable[NewJob],
    *,
    registry: Registry | None = None,
    settings: Settings | None = None,
) -> list[Enqueued] | Coroutine[Any, Any, list[Enqueued]]:
    """Add many jobs to the transaction of ``session``; handles come back in the order given.

    One bad job refuses the whole batch, and nothing of it is written. Batches of
    :data:`outbox.bulk.COPY_THRESHOLD` jobs or more are sent with COPY.
    """
    settings = _settings(settings, registry)
    batch = listed(
        jobs, NewJob, "enqueue_many takes an iterable of outbox.NewJob", "for one job use enqueue()"
    )
    columns = _bind(batch, registry, settings)
    if not columns.uuid:
        return _no_jobs(session)
    if _is_async(session):
        return _execute_async(session, columns, settings)
    return _execute(cast("SyncTarget", session), columns, settings)


def _settings(settings: object, registry: object) -> Settings:
    """The settings to use, once a ``settings`` or ``registry`` of the wrong type is refused
    (``{}`` would otherwise have meant the environment's settings, silently)."""
    if registry is not None and not isinstance(registry, Registry):
        raise InvalidJob(
            f"registry must be an outbox.Registry or None, not {type(registry).__name__}"
        )
    if settings is None:
        return default_settings()
    if not isinstance(settings, Settings):
        raise InvalidJob(
            f"settings must be an outbox.Settings or None, not {type(settings).__name__}"
        )
    return settings


def listed(items: object, one: type, takes: str, single: str) -> list[Any]:
    """``items`` as a list; a single ``one``, or what is not a collection, refused with
    ``takes`` (what the caller takes) and ``single`` (the call for one item)."""
    if isinstance(items, one | str | bytes | Mapping) or not isinstance(items, Iterable):
        raise InvalidJob(f"{takes} (a list), not {type(items).__name__}; {single}")
    return list(items)


def _bind(batch: Sequence[NewJob], registry: Registry | None, settings: Settings) -> Columns:
    """The batch as columns with every option checked; payloads are encoded later, by
    the path that sends them (see :meth:`Columns.encoded`)."""
    n = len(batch)
    columns = Columns([], [], [], [], [], [], [], [], [], [])
    # Per (type, queue, max_attempts) as given: as resolved. Batches hold few distinct ones.
    resolved: dict[tuple[str, str | None, int | None], tuple[str, str, int | None]] = {}
    keys_seen: set[str] = set()
    for i, job in enumerate(batch):
        try:
            if type(job) is not NewJob:
                raise InvalidJob(f"enqueue_many takes NewJob items, not {type(job).__name__}")
            spec = (job.type, job.queue, job.max_attempts)
            if _cacheable(spec):
                if spec not in resolved:
                    resolved[spec] = _resolve(job, registry, settings)
                job_type, queue, max_attempts = resolved[spec]
            else:  # odd types: check them, which refuses them, without hashing or caching
                job_type, queue, max_attempts = _resolve(job, registry, settings)
            key = job.key
            if key is not None and (type(key) is not str or key not in keys_seen):
                validate.key(key)  # a batch repeats its keys: check each one once
                keys_seen.add(key)
            idempotency_key = (
                None
                if job.idempotency_key is None
                else validate.key(job.idempotency_key, "idempotency_key")
            )
            exact_zero = type(job.priority) is int and job.priority == 0
            priority = 0 if exact_zero else validate.priority(job.priority)
            if job.run_at is None and job.delay is None:
                run_at, delay = None, None
            else:
                run_at, delay = validate.schedule(job.run_at, job.delay)
        except InvalidJob as exc:
            raise refused(exc, i, n, getattr(job, "type", "?")) from None
        columns.type.append(job_type)
        columns.queue.append(queue)
        columns.max_attempts.append(max_attempts)
        columns.key.append(key)
        columns.idempotency_key.append(idempotency_key)
        columns.priority.append(priority)
        columns.run_at.append(run_at)
        columns.delay.append(delay)
        columns.payload.append(job.payload)
    columns.uuid = uuid7_batch(n)
    return columns


def _statement(columns: Columns, settings: Settings) -> tuple[sa.TextClause, dict[str, Any]]:
    """The statement for a batch under the COPY threshold, and its parameters: one job
    without an idempotency key (most calls of :func:`enqueue`) has a statement of its own,
    with less for the server to do; both return rows of the same shape."""
    if len(columns.uuid) == 1 and columns.idempotency_key[0] is None:
        return ENQUEUE_ONE, {
            "uuid": columns.uuid[0],
            "type": columns.type[0],
            "queue": columns.queue[0],
            "key": columns.key[0],
            "payload": columns.encoded(0, settings.payload_limit),
            "priority": columns.priority[0],
            "run_at": columns.run_at[0],
            "delay": columns.delay[0],
            "max_attempts": columns.max_attempts[0],
            "lock_class": KEY_LOCK_CLASS,
        }
    return ENQUEUE, _statement_params(columns, settings)


def _statement_params(columns: Columns, settings: Settings) -> dict[str, Any]:
    limit = settings.payload_limit
    params = {f.name: getattr(columns, f.name) for f in dataclasses.fields(columns)}
    params["payload"] = (
        "[" + ",".join(columns.encoded(i, limit) for i in range(len(columns.uuid))) + "]"
    )
    params["lock_class"] = KEY_LOCK_CLASS
    params["retention"] = settings.idempotency_retention
    return params


def _cacheable(spec: tuple[object, object, object]) -> bool:
    """Only exact str/int options share a cache entry: True == 1 and 1.0 == 1 must not
    borrow the check of a valid 1, and a list must not be hashed."""
    job_type, queue, attempts = spec
    return (
        type(job_type) is str
        and (queue is None or type(queue) is str)
        and (attempts is None or type(attempts) is int)
    )


def _resolve(
    job: NewJob, registry: Registry | None, settings: Settings
) -> tuple[str, str, int | None]:
    """Type, queue and max_attempts of a job, with its handler's defaults where it has one."""
    job_type = validate.job_type(job.type)
    handler = registry.get(job_type) if registry is not None else None
    if registry is not None and registry.strict and handler is None:
        known = ", ".join(sorted(h.type for h in registry)) or "none"
        raise UnknownJobType(
            f"no handler is registered for job type {job_type!r} (known types: {known}); "
            "register one or fix the type name"
        )
    queue = job.queue if job.queue is not None else handler.queue if handler else None
    attempts = job.max_attempts
    if attempts is None and handler is not None:
        attempts = handler.max_attempts
    return (
        job_type,
        validate.queue(queue if queue is not None else settings.default_queue),
        validate.max_attempts(attempts),
    )


def connection_of(session: SyncTarget, what: str) -> sa.Connection:
    """The connection of a Session or Connection on psycopg 3, or a clear refusal of
    anything else (``what`` names the caller: enqueue, inbox)."""
    orm = sys.modules.get("sqlalchemy.orm")
    if orm is not None and isinstance(session, orm.Session | orm.scoped_session):
        try:
            connection: sa.Connection = session.connection()
        except sa.exc.UnboundExecutionError:
            raise UnsupportedSession(
                f"{what} needs a Session bound to an engine; this one has no bind: create "
                "it with Session(engine)"
            ) from None
    elif isinstance(session, sa.Connection):
        connection = session
    else:
        raise UnsupportedSession(
            f"{what} needs a SQLAlchemy Session, AsyncSession or Connection, "
            f"not {type(session).__name__}"
        )
    _check_driver(connection.dialect)
    return connection


def _execute(session: SyncTarget, columns: Columns, settings: Settings) -> list[Enqueued]:
    connection = connection_of(session, "enqueue")
    driver: psycopg.Connection[Any] = connection.connection.driver_connection  # type: ignore[assignment]
    if len(columns.uuid) < bulk.COPY_THRESHOLD:
        statement, params = _statement(columns, settings)
        with _unprepared(driver) if _behind_pooler(connection, driver) else _AS_IS:
            rows = connection.execute(statement, params).all()
        return _handles(columns.uuid, {o - 1: u for o, u in rows if o is not None})
    params = bulk.prepare_params(columns, KEY_LOCK_CLASS, settings.idempotency_retention)
    with _atomic(driver):
        return _handles(columns.uuid, bulk.run(driver, columns, params, settings.payload_limit))


async def _execute_async(
    session: AsyncTarget, columns: Columns, settings: Settings
) -> list[Enqueued]:
    from sqlalchemy.ext.asyncio import AsyncConnection

    if isinstance(session, AsyncConnection):
        connection = session
    else:
        connection = await session.connection()
    _check_driver(connection.dialect)
    raw = await connection.get_raw_connection()
    driver: psycopg.AsyncConnection[Any] = raw.driver_connection  # type: ignore[assignment]
    if len(columns.uuid) < bulk.COPY_THRESHOLD:
        statement, params = _statement(columns, settings)
        with _unprepared(driver) if await _behind_pooler_async(connection, driver) else _AS_IS:
            result = await connection.execute(statement, params)
        return _handles(columns.uuid, {o - 1: u for o, u in result.all() if o is not None})
    params = bulk.prepare_params(columns, KEY_LOCK_CLASS, settings.idempotency_retention)
    if driver.autocommit:
        async with driver.transaction():
            skip = await bulk.run_async(driver, columns, params, settings.payload_limit)
    else:
        skip = await bulk.run_async(driver, columns, params, settings.payload_limit)
    return _handles(columns.uuid, skip)


def _behind_pooler(connection: sa.Connection, driver: psycopg.Connection[Any]) -> bool:
    """Whether the enqueue statement must not be prepared on this connection: a pooler
    (PgBouncer) hands its transactions to whichever server session is free.

    A pooler gives its clients a backend pid of its own making (the cancel key), where a
    direct connection is given its server session's. The server is asked once per DBAPI
    connection, and only once psycopg would prepare the statement: a connection that
    enqueues fewer than ``prepare_threshold`` times pays no extra round trip.
    """
    pooled = _known(connection.info, driver)
    if pooled is None:
        with _unprepared(driver):
            server_pid = connection.exec_driver_sql(SERVER_PID).scalar_one()
        pooled = connection.info[_POOLED] = server_pid != driver.info.backend_pid
    return pooled


async def _behind_pooler_async(
    connection: AsyncConnection, driver: psycopg.AsyncConnection[Any]
) -> bool:
    pooled = _known(connection.info, driver)
    if pooled is None:
        with _unprepared(driver):
            server_pid = (await connection.exec_driver_sql(SERVER_PID)).scalar_one()
        pooled = connection.info[_POOLED] = server_pid != driver.info.backend_pid
    return pooled


def _known(
    info: dict[Any, Any], driver: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]
) -> bool | None:
    """The verdict where no question to the server is needed yet; None to ask it now."""
    pooled: bool | None = info.get(_POOLED)
    if pooled is not None:
        return pooled
    threshold = driver.prepare_threshold
    if threshold is None:
        return False  # this connection prepares nothing
    # psycopg prepares a statement on its run after `threshold` runs: until then, count.
    runs: int = info.get(_RUNS, 0)
    if runs < threshold:
        info[_RUNS] = runs + 1
        return False
    return None


@contextlib.contextmanager
def _unprepared(driver: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> Iterator[None]:
    """Statements run in this block are not prepared, whatever the connection's settings.

    Behind a pooler, a prepared statement lives in one server session, and the next
    transaction may run in another: ``prepared statement "_pg3_0" does not exist`` (or
    ``already exists``, where another client prepared it there). The application's
    engine is its own, so the setting is only lent for outbox's statements.
    """
    threshold = driver.prepare_threshold
    driver.prepare_threshold = None
    try:
        yield
    finally:
        driver.prepare_threshold = threshold


def _atomic(driver: psycopg.Connection[Any]) -> contextlib.AbstractContextManager[Any]:
    """The caller's transaction; or, on an autocommit connection, one of our own so the
    three steps of the COPY path stand or fall together."""
    return driver.transaction() if driver.autocommit else contextlib.nullcontext()


def _handles(uuids: list[UUID], duplicates: dict[int, UUID]) -> list[Enqueued]:
    """One handle per job; a duplicate's carries the existing job's uuid."""
    handles = [Enqueued(uuid) for uuid in uuids]
    for index, existing in duplicates.items():
        handles[index] = Enqueued(existing, duplicate=True)
    return handles


async def _first(handles: Coroutine[Any, Any, list[Enqueued]]) -> Enqueued:
    return (await handles)[0]


def _no_jobs(session: object) -> list[Enqueued] | Coroutine[Any, Any, list[Enqueued]]:
    if _is_async(session):

        async def nothing() -> list[Enqueued]:
            return []

        return nothing()
    return []


def _check_driver(dialect: sa.Dialect) -> None:
    if dialect.name != "postgresql" or dialect.driver != "psycopg":
        raise UnsupportedSession(
            f"outbox needs PostgreSQL through psycopg 3; this session uses "
            f"{dialect.name}+{dialect.driver}: create the engine with a "
            "'postgresql+psycopg://' URL"
        )
