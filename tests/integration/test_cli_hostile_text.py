"""Operator commands print stored text as it is: never as markup, never as terminal codes.

Keys, error messages, reasons, actors and relay names come from applications, handlers and
operators; an error such as ``GET [/v1/charges/ch_1] returned 502`` must not crash
``outbox jobs show`` for the very job an operator investigates, ``[red]`` must not restyle
(or ``[link=...]`` relink) the output, and an ESC sequence must not reach the terminal.
"""

from __future__ import annotations

import csv
import io
import json
import re
import uuid
from datetime import timedelta

import sqlalchemy as sa
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from outbox_relay import complete, execute
from outbox_relay.claim import AttemptLimits, claim_batch
from sqlalchemy.orm import Session

import outbox
from outbox.cli import cli
from outbox.testing import empty_tables

CLAIM = {"queues": ["default"], "limit": 1, "lease": timedelta(seconds=30),
         "limits": AttemptLimits(default=5, types=("hostile.job",))}  # fmt: skip
# Wide enough that no table wraps a value: each value must appear in one piece.
WIDE = {"COLUMNS": "4000"}
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def visible(text: str) -> str:
    """How a terminal table must show ``text``: each control character as an escape."""
    return CONTROL.sub(lambda m: SHORT.get(m[0], f"\\x{ord(m[0]):02x}"), text)


def run(dsn: str, *args: str) -> Result:
    return CliRunner(env=WIDE).invoke(cli, ["--dsn", dsn, *args])


def terminal_output(result: Result) -> str:
    """The output of a command meant for people: it ran, and holds no control character but
    the newlines and tabs of its own layout."""
    assert result.exit_code == 0, (result.output, result.exception)
    output = result.stdout_bytes.decode()
    raw = {c for c in CONTROL.findall(output) if c not in "\n\t"}
    assert not raw, f"raw control characters reached the terminal: {sorted(raw)!r}"
    return output


def clean(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        empty_tables(conn)


def enqueue(engine: sa.Engine, key: str | None, max_attempts: int | None = None) -> uuid.UUID:
    with Session(engine) as session:
        handle = outbox.enqueue(session, "hostile.job", {}, key=key, max_attempts=max_attempts)
        session.commit()
    return handle.uuid


def fail(engine: sa.Engine, message: str, relay: str = "host:1:a") -> None:
    """One relay attempt, through the relay's own claim and completion, that fails with
    ``message``."""
    failing = outbox.Registry()

    @failing.handler("hostile.job")
    def fails(job: outbox.Job) -> None:
        raise RuntimeError(message)

    with engine.connect() as conn:
        [job] = claim_batch(conn, relay=relay, **CLAIM)
        complete.complete(conn, relay, [execute.run(failing["hostile.job"], job)], failing)


def dead_job(engine: sa.Engine, message: str, key: str | None = None) -> uuid.UUID:
    job = enqueue(engine, key, max_attempts=1)
    fail(engine, message)
    return job


# -- the cases reported -----------------------------------------------------------------


def test_jobs_show_prints_an_error_with_brackets_as_it_was_raised(db: sa.Engine, dsn: str) -> None:
    job = dead_job(db, "GET [/v1/charges/ch_1] returned 502")
    output = terminal_output(run(dsn, "jobs", "show", str(job)))
    assert "GET [/v1/charges/ch_1] returned 502" in output


def test_audit_trail_of_a_job_prints_an_error_with_brackets(db: sa.Engine, dsn: str) -> None:
    job = dead_job(db, "GET [/v1/charges/ch_1] returned 502")
    output = terminal_output(run(dsn, "audit", "trail", "--job", str(job)))
    assert "GET [/v1/charges/ch_1] returned 502" in output


def test_audit_trail_by_key_prints_a_key_that_looks_like_closing_markup(
    db: sa.Engine, dsn: str
) -> None:
    enqueue(db, "[/bold]x")
    output = terminal_output(run(dsn, "audit", "trail", "--key", "[/bold]x"))
    assert "[/bold]x" in output


def test_markup_in_stored_text_is_shown_not_obeyed(db: sa.Engine, dsn: str) -> None:
    message = "[red]card declined[/red] [link=http://evil.example]click here[/link] :warning:"
    job = dead_job(db, message, key="[bold]acct:1")
    enqueue(db, "[bold]acct:1")  # waits behind the dead job: status lists the key as blocked
    for args in (("jobs", "show", str(job)), ("audit", "trail", "--job", str(job))):
        output = terminal_output(run(dsn, *args))
        assert message in output
        assert "[bold]acct:1" in output
    assert "[bold]acct:1" in terminal_output(run(dsn, "status"))


def test_escape_sequences_in_errors_are_escaped_visibly(db: sa.Engine, dsn: str) -> None:
    message = "\x1b[31mred\x1b[0m \x1b]8;;http://evil\x07link\x1b]8;;\x07 \x9b2J"
    job = dead_job(db, message + "\nsecond line")
    for args in (("jobs", "show", str(job)), ("audit", "trail", "--job", str(job))):
        output = terminal_output(run(dsn, *args))
        assert "\\x1b[31mred\\x1b[0m \\x1b]8;;http://evil\\x07link\\x1b]8;;\\x07 \\x9b2J" in output
        assert "\\nsecond line" in output


def test_json_keeps_stored_text_exact(db: sa.Engine, dsn: str) -> None:
    message = "[red]x\x1b[31m\x9b\u2028"
    job = dead_job(db, message, key="[/]k")
    shown = json.loads(terminal_output(run(dsn, "jobs", "show", str(job), "--json")))
    assert shown["job"]["key"] == "[/]k"
    assert {h["error_message"] for h in shown["history"] if h["error_message"]} == {message}
    rows = json.loads(terminal_output(run(dsn, "audit", "trail", "--job", str(job), "--format",
                                          "json")))  # fmt: skip
    assert {r["error_message"] for r in rows} == {None, message}


def test_csv_keeps_stored_text_exact_for_the_tools_that_read_it(db: sa.Engine, dsn: str) -> None:
    message = '[red]x\x1b[31m,"quoted"\r\nnext\x9b'
    job = dead_job(db, message, key="[/bold]x")
    result = run(dsn, "audit", "trail", "--key", "[/bold]x", "--format", "csv")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout_bytes.decode(), newline="")))
    assert {r["job_uuid"] for r in rows} == {str(job)}
    assert {r["key"] for r in rows} == {"[/bold]x"}
    assert {r["error_message"] for r in rows} == {"", message}


# -- any text ------------------------------------------------------------------------------

_markup = st.sampled_from([
    "[red]", "[/bold]", "[/]", "[link=http://x]", "[bold red]x[/]", "[", "]", "[[", "]]",
    "\\[", "[/bold]x", ":warning:", "[@click=app.quit]", "[on #ff0000]",
])  # fmt: skip
_codes = st.sampled_from([
    "\x1b[31m", "\x1b]8;;http://evil\x07", "\x1b]8;;\x1b\\", "\x9b31m", "\x9d0;title\x9c",
    "\x1b[2J\x1b[H", "\r", "\x08", "\x7f", "\x85", "\n", "\t", "\x07", "\x1bc",
])  # fmt: skip
# PostgreSQL text holds any character but NUL (and no lone surrogate).
_any = st.text(
    st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), min_size=1, max_size=8
)
hostile = st.lists(st.one_of(_markup, _codes, _any), min_size=1, max_size=5).map("".join)
# A key as enqueue accepts it: something visible, and no control character.
keys = hostile.map(lambda text: "k" + CONTROL.sub("", text))


def heartbeat(engine: sa.Engine, relay: str) -> None:
    """A live relay whose name and version are the hostile text (status lists it)."""
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO outbox_relays (relay, host, pid, queues, concurrency, version, "
                "expires_at) VALUES (:r, :r, 1, ARRAY[:r], 1, :r, now() + interval '1 minute')"
            ),
            {"r": relay},
        )


# Each example runs a dozen commands against the database: no shrinking, which would take
# minutes; the failing example is printed as drawn.
@settings(
    max_examples=20, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)  # fmt: skip
@given(key=keys, message=hostile, actor=hostile, reason=hostile, relay=hostile)
def test_every_command_prints_any_stored_text_literally_and_escaped(
    engine: sa.Engine, dsn: str, key: str, message: str, actor: str, reason: str, relay: str
) -> None:
    clean(engine)
    actor = "a" + actor  # an action needs a named actor
    job = enqueue(engine, key, max_attempts=1)
    enqueue(engine, key)  # waits behind the dead job: status lists the key as blocked
    fail(engine, message, relay=relay)
    revived = run(dsn, "jobs", "retry", str(job), f"--actor={actor}", f"--reason={reason}")
    terminal_output(revived)
    fail(engine, message, relay=relay)
    heartbeat(engine, relay)

    show = terminal_output(run(dsn, "jobs", "show", str(job)))
    for value in (key, message, actor, reason, relay):
        assert visible(value) in show
    for args in (("--job", str(job)), ("--key", key)):
        trail = terminal_output(run(dsn, "audit", "trail", *args))
        for value in (key, message, actor, relay):
            assert visible(value) in trail
    by_actor = terminal_output(run(dsn, "audit", "trail", "--actor", actor))  # the revival only
    for value in (key, actor):
        assert visible(value) in by_actor
    status = terminal_output(run(dsn, "status"))
    for value in (key, relay):
        assert visible(value) in status

    shown = json.loads(terminal_output(run(dsn, "jobs", "show", str(job), "--json")))
    assert shown["job"]["key"] == key
    assert {h["actor"] for h in shown["history"]} == {None, actor}
    exported = run(dsn, "audit", "trail", "--key", key, "--format", "csv")
    assert exported.exit_code == 0, exported.output
    rows = list(csv.DictReader(io.StringIO(exported.stdout_bytes.decode(), newline="")))
    assert {r["key"] for r in rows} == {key}
    assert {r["error_message"] for r in rows} == {"", message}
    assert {r["reason"] for r in rows} >= {reason}
    assert {r["actor"] for r in rows} == {"", actor}
