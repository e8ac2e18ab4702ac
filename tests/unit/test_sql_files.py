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


RELAY_QUERIES = load("outbox_relay.sql")


@pytest.mark.parametrize("name", sorted({**queries, **RELAY_QUERIES}))
def test_every_statement_is_short_enough_for_psycopgs_statement_cache(name: str) -> None:
    """psycopg parses a statement's placeholders again on every execution when it is longer
    than 4,096 characters (psycopg/_queries.py): the claim and the completion, run a few
    hundred times a second, spent about an eighth of the relay's CPU in it."""
    from psycopg._queries import MAX_CACHED_STATEMENT_LENGTH

    statement = pyformat({**queries, **RELAY_QUERIES}[name])
    assert len(statement.encode()) <= MAX_CACHED_STATEMENT_LENGTH


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("SELECT 1 -- one\nFROM t", "SELECT 1\nFROM t"),
        ("-- a line of its own\n    SELECT 1", "SELECT 1"),
        ("SELECT '--not a comment' AS a", "SELECT '--not a comment' AS a"),
        ("SELECT 'it''s -- still text' -- but this goes", "SELECT 'it''s -- still text'"),
        ("SELECT $$ -- body $$ -- gone", "SELECT $$ -- body $$"),
        ("SELECT $f$ a\n   -- kept\n $f$", "SELECT $f$ a\n   -- kept\n $f$"),
        ("SELECT 'two\n    lines'", "SELECT 'two\n    lines'"),
        ('SELECT "col--name" FROM t', 'SELECT "col--name" FROM t'),
        ("SELECT a - -1", "SELECT a - -1"),
        ("SELECT  a,\t  b   FROM t", "SELECT a, b FROM t"),
        ("SELECT 'a    b'", "SELECT 'a    b'"),
        ("SELECT 'open -- x\n  y", "SELECT 'open -- x\n  y"),  # unclosed: kept to the end
        ("SELECT $a$ open\n  -- kept", "SELECT $a$ open\n  -- kept"),
        ("SELECT $1,  $2 -- two\n\n  FROM t", "SELECT $1, $2\nFROM t"),
        ("\t\tSELECT\t1\t\n", "SELECT 1"),
    ],
)
def test_comments_and_indentation_go_and_quoted_text_stays(text: str, kept: str) -> None:
    from outbox.sql import compact

    assert compact(text) == kept
