"""The named statements are read from outbox's .sql files, ready to execute."""

from __future__ import annotations

import re

import pytest

from outbox.sql import load, pyformat, queries

EXPECTED = [
    "enqueue",
    "enqueue_bulk_prepare",
    "enqueue_bulk_copy_jobs",
    "status_depth",
    "status_blocked_keys",
]


@pytest.mark.parametrize("name", EXPECTED)
def test_statement_the_code_uses_is_loaded(name: str) -> None:
    assert name in queries


@pytest.mark.parametrize("name", sorted(queries))
def test_statement_has_no_trailing_semicolon_or_whitespace(name: str) -> None:
    statement = queries[name]
    assert statement
    assert statement == statement.strip()
    assert not statement.endswith(";")


@pytest.mark.parametrize("name", sorted(queries))
def test_statement_does_not_include_the_next_header(name: str) -> None:
    assert "-- name:" not in queries[name]


def test_loading_again_gives_the_same_statements() -> None:
    assert load("outbox.sql") == queries


def test_copy_statements_read_binary_copy_data() -> None:
    statement = queries["enqueue_bulk_copy_jobs"]
    assert re.search(r"^COPY outbox_jobs \(", statement, re.MULTILINE)
    assert statement.endswith("FROM STDIN (FORMAT BINARY)")


def test_pyformat_turns_named_binds_into_psycopg_placeholders() -> None:
    assert pyformat("SELECT :a, :b_2 WHERE x = :a") == "SELECT %(a)s, %(b_2)s WHERE x = %(a)s"


def test_pyformat_leaves_casts_alone_and_escapes_percent_signs() -> None:
    assert pyformat("SELECT :n::int, 'x%' LIKE '%y'") == "SELECT %(n)s::int, 'x%%' LIKE '%%y'"
