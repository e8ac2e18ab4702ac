"""The consumer's side of publishing: apply each message once, however often it arrives.

Publishing is at least once (a relay killed between the broker's acknowledgement and the
job's completion publishes again, under the same id; brokers redeliver what a consumer did
not acknowledge). :func:`inbox` records a message id in the consumer's own transaction, with
the effects of applying it: the first receipt commits with them, every later one finds it.
"""

from __future__ import annotations

import re
from collections.abc import Coroutine
from datetime import timedelta
from typing import TYPE_CHECKING, Any, cast, overload
from uuid import UUID

import psycopg
import sqlalchemy as sa

from outbox.enqueue import (
    _AS_IS,
    _behind_pooler,
    _behind_pooler_async,
    _check_driver,
    _is_async,
    _unprepared,
    connection_of,
)
from outbox.errors import InvalidReceipt
from outbox.sql import queries

if TYPE_CHECKING:
    from outbox.enqueue import AsyncTarget, SyncTarget

RECEIVE = sa.text(queries["inbox_receive"])
PRUNE = sa.text(queries["prune_inbox"])
CONSUMER_MAX = 128
MESSAGE_ID_MAX = 255
_CONSUMER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/-]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


@overload
def inbox(session: SyncTarget, consumer: str, message_id: str | UUID) -> bool: ...
@overload
def inbox(
    session: AsyncTarget, consumer: str, message_id: str | UUID
) -> Coroutine[Any, Any, bool]: ...
def inbox(
    session: SyncTarget | AsyncTarget, consumer: str, message_id: str | UUID
) -> bool | Coroutine[Any, Any, bool]:
    """Record that ``consumer`` received ``message_id``, in the transaction of ``session``.

    True the first time this consumer receives this id: apply the message in the same
    transaction. False after that: the message was applied already (or is being applied by
    a transaction that has not ended: the call waits for it, then answers), so skip it and
    acknowledge it. Of concurrent receipts of one id, exactly one gets True.

    ``session`` is a SQLAlchemy ``Session``, ``AsyncSession`` (then await the result) or
    ``Connection``. ``consumer`` names the receiving application (letters, digits and
    ``_ . : / -``): two consumers of one message each apply it once. ``message_id`` is the id
    on the wire (a ``str`` or ``UUID``). Receipts are kept for the inbox retention
    (``OUTBOX_INBOX_RETENTION``) and removed by ``outbox prune``.

    Raises :class:`outbox.InvalidReceipt` for a bad consumer or message id, before anything
    is written.
    """
    params = {"consumer": _consumer(consumer), "message_id": _message_id(message_id)}
    if _is_async(session):
        return _receive_async(session, params)
    return _receive(cast("SyncTarget", session), params)


def _receive(session: SyncTarget, params: dict[str, str]) -> bool:
    connection = connection_of(session, "inbox")
    driver: psycopg.Connection[Any] = connection.connection.driver_connection  # type: ignore[assignment]
    with _unprepared(driver) if _behind_pooler(connection, driver) else _AS_IS:
        return connection.execute(RECEIVE, params).first() is not None


async def _receive_async(session: AsyncTarget, params: dict[str, str]) -> bool:
    from sqlalchemy.ext.asyncio import AsyncConnection

    if isinstance(session, AsyncConnection):
        connection = session
    else:
        connection = await session.connection()
    _check_driver(connection.dialect)
    raw = await connection.get_raw_connection()
    driver: psycopg.AsyncConnection[Any] = raw.driver_connection  # type: ignore[assignment]
    with _unprepared(driver) if await _behind_pooler_async(connection, driver) else _AS_IS:
        result = await connection.execute(RECEIVE, params)
    return result.first() is not None


def _consumer(value: object) -> str:
    if not isinstance(value, str):
        raise InvalidReceipt(f"inbox consumer must be a str, not {type(value).__name__}")
    if not value:
        raise InvalidReceipt("inbox consumer must not be empty: name the receiving application")
    if len(value) > CONSUMER_MAX:
        raise InvalidReceipt(
            f"inbox consumer {value[:40]!r}... is {len(value)} characters; at most {CONSUMER_MAX}"
        )
    if not _CONSUMER.fullmatch(value):
        raise InvalidReceipt(
            f"inbox consumer {value!r} may hold only letters, digits and _ . : / -, and must "
            "start with a letter or digit"
        )
    return value


def _message_id(value: object) -> str:
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        raise InvalidReceipt(
            "inbox message_id must be a str or UUID, not bytes: decode the header first "
            "(for example value.decode())"
        )
    if not isinstance(value, str):
        raise InvalidReceipt(f"inbox message_id must be a str or UUID, not {type(value).__name__}")
    if not value.strip():
        raise InvalidReceipt(
            "inbox message_id must not be empty or blank: pass the id the message carries"
        )
    if value != value.strip():
        raise InvalidReceipt(
            f"inbox message_id {value[:40]!r} starts or ends with white space: strip it, or "
            "the same message could be received twice under two ids"
        )
    if len(value) > MESSAGE_ID_MAX:
        raise InvalidReceipt(
            f"inbox message_id {value[:40]!r}... is {len(value)} characters; "
            f"at most {MESSAGE_ID_MAX}"
        )
    if _CONTROL.search(value):
        raise InvalidReceipt(f"inbox message_id {value!r} contains a control character")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise InvalidReceipt(f"inbox message_id {value!r} is not valid Unicode") from None
    return value


def prune(connection: sa.Connection, retention: timedelta, batch: int = 10_000) -> int:
    """Remove receipts older than ``retention``, a batch per transaction; how many."""
    total = 0
    while True:
        with connection.begin():
            removed = connection.execute(PRUNE, {"retention": retention, "limit": batch}).rowcount
        total += removed
        if removed < batch:
            return total
