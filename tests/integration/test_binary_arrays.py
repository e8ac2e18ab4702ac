"""outbox.database.binary_arrays: the relay's claims and completions send lists in binary."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from psycopg.types.numeric import Int4

from outbox.database import binary_arrays, create_engine


@pytest.fixture
def binary(dsn: str) -> sa.Engine:
    engine = create_engine(dsn)
    binary_arrays(engine)
    yield engine
    engine.dispose()


def sent_format(engine: sa.Engine, value: list[object]) -> str:
    """The format psycopg sends ``value`` in on a connection of ``engine``."""
    from psycopg.adapt import PyFormat, Transformer

    with engine.connect() as connection:
        raw = connection.connection.driver_connection
        dumper = Transformer(raw).get_dumper(value, PyFormat.AUTO)
    return "binary" if dumper.format == 1 else "text"


def test_lists_go_in_binary_on_the_engine_and_in_text_elsewhere(
    binary: sa.Engine, engine: sa.Engine
) -> None:
    ids = [uuid.uuid4() for _ in range(3)]
    assert sent_format(binary, ids) == "binary"
    assert sent_format(engine, ids) == "text"  # an application's engine is left as it is


@pytest.mark.parametrize(
    ("cast", "value"),
    [
        ("uuid[]", [uuid.uuid4(), None, uuid.uuid4()]),
        ("uuid[]", []),
        ("text[]", ['quote " backslash \\ braces {} comma ,', None, ""]),
        ("text[]", [None, None]),
        ("integer[]", [Int4(1), Int4(2)]),
        ("bigint[]", [1, 2**40]),
        ("smallint[]", [0, 3]),
        ("double precision[]", [0.5, None]),
        ("boolean[]", [True, False]),
        ("timestamptz[]", [datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)]),
    ],
)
def test_values_arrive_intact(binary: sa.Engine, cast: str, value: list[object]) -> None:
    with binary.connect() as connection:
        back = connection.execute(sa.text(f"SELECT CAST(:v AS {cast})"), {"v": value}).scalar()
    assert back == value


def test_a_list_of_mixed_types_is_refused_with_the_types_named(binary: sa.Engine) -> None:
    with binary.connect() as connection, pytest.raises(sa.exc.DataError, match="float, int"):
        connection.execute(sa.text("SELECT CAST(:v AS float8[])"), {"v": [0.5, 1]})
