"""The docs show what the code does: every fenced block of README.md and docs/**/*.md that
can be checked is checked, so a page cannot drift from the code unnoticed.

- A ``python`` block runs as a script in an empty folder, with ``OUTBOX_DSN`` naming a
  migrated database with empty outbox tables, and must exit 0 within the time limit.
- In a ``console`` block, each ``$ outbox ...`` command runs the same way (the block's
  commands one after another, on one database), and must exit with the status its output
  shows (1 after ``Error:``, 2 after ``Usage:`` and ``Error:``, else 0) and print what is
  shown, numbers, uuids, digests and times aside. ``--help`` blocks are
  tests/unit/test_docs_cli.py's.
- A block marked ``<!-- fragment -->``, ``<!-- signature -->`` or ``<!-- unmigrated -->`` on
  the line above its fence is checked as tests/docs/markdown.py says.

Blocks in other languages (``sh``, ``text``, ``sql``, ...) are not run."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from outbox.cli import cli
from outbox.database import create_engine
from outbox.testing import empty_tables, temporary_database
from tests.docs.markdown import MARKERS, Block, Command, all_blocks, commands

TIMEOUT = 20  # seconds for one snippet or command
FIX = (
    "fix the page or the code; if the block is part of a larger program or needs data the "
    "page describes, put <!-- fragment --> on the line above its fence"
)

BLOCKS = all_blocks()
PYTHON = [b for b in BLOCKS if b.lang == "python"]
CONSOLE = [b for b in BLOCKS if b.lang == "console" and any(commands(b))]


@pytest.fixture(scope="module")
def docs_dsn(server: str) -> Iterator[str]:
    """A migrated database of the docs' own: snippets may leave tables of theirs behind."""
    with temporary_database(server, prefix="outbox_docs") as dsn:
        yield dsn


@pytest.fixture
def fresh(docs_dsn: str) -> str:
    engine = create_engine(docs_dsn, poolclass=sa.NullPool)
    try:
        with engine.begin() as connection:
            empty_tables(connection)
    finally:
        engine.dispose()
    return docs_dsn


def environment(dsn: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")}
    env.update({"OUTBOX_DSN": dsn, "COLUMNS": "80", "NO_COLOR": "1", "TERM": "dumb"})
    env.update(extra or {})
    return env


def test_every_marker_is_known() -> None:
    unknown = [
        f"{b}: <!-- {b.marker} -->"
        for b in BLOCKS
        if b.marker and b.marker not in MARKERS and b.lang in ("python", "console")
    ]
    assert not unknown, f"unknown markers (known: {', '.join(MARKERS)}): {unknown}"


def test_the_pages_have_blocks_to_check() -> None:
    assert len(PYTHON) > 20
    assert len(CONSOLE) > 10


@pytest.mark.parametrize("block", PYTHON, ids=lambda b: b.where)
def test_python_block(block: Block, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    if block.marker == "signature":
        return
    try:
        compile(block.text, block.where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    except SyntaxError as exc:
        pytest.fail(
            f"{block} does not compile: {exc.msg} (its line {exc.lineno}); if it shows an "
            "API's shape rather than code, put <!-- signature --> on the line above its fence"
        )
    if block.marker == "fragment":
        return
    dsn = request.getfixturevalue("fresh")
    script = tmp_path / "snippet.py"
    script.write_text(block.text)
    try:
        done = subprocess.run(
            [sys.executable, str(script)], cwd=tmp_path, env=environment(dsn),
            capture_output=True, text=True, timeout=TIMEOUT,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail(f"{block} did not finish within {TIMEOUT} s: {FIX}")
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["(nothing on stderr)"])[-1]
        pytest.fail(f"{block} exits {done.returncode} when run alone: {reason}; {FIX}")


@pytest.mark.parametrize("block", CONSOLE, ids=lambda b: b.where)
def test_console_block(
    block: Block, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if block.marker == "fragment":
        monkeypatch.chdir(tmp_path)  # an option that opens a file makes it here
        for command in commands(block):
            parses(block, command)
        return
    if block.marker == "unmigrated":
        server = request.getfixturevalue("server")
        with temporary_database(server, prefix="outbox_docs", migrated=False) as dsn:
            run_commands(block, dsn, tmp_path)
    else:
        run_commands(block, request.getfixturevalue("fresh"), tmp_path)


def run_commands(block: Block, dsn: str, cwd: Path) -> None:
    for command in commands(block):
        shown = f"{block}, `$ {command.line}`"
        status, output = run_command(command, dsn, cwd, shown)
        expected = expected_status(command.output)
        assert status == expected, (
            f"{shown} exits {status}, the page shows status {expected}; it printed:\n"
            f"{output}\n{FIX}"
        )
        printed, documented = stable(output), stable(command.output)
        assert printed == documented, (
            f"{shown} prints something else than the page shows (numbers, uuids, digests and "
            f"times aside);\nprinted:\n{output}\nshown:\n{command.output}\n{FIX}"
        )


def run_command(command: Command, dsn: str, cwd: Path, shown: str) -> tuple[int, str]:
    """Its exit status and output (stdout and stderr as a terminal interleaves them).

    In this process, which is quick, except `relay`: a relay sets up logging and signal
    handlers for its process, and one that does not stop must be killed.
    """
    env = environment(dsn, command.env)
    if command.argv[:1] != ["relay"] and "relay" not in command.argv:
        unset: dict[str, str | None] = {k: None for k in os.environ if k.startswith("OUTBOX_")}
        old = Path.cwd()
        os.chdir(cwd)
        try:
            result = CliRunner().invoke(cli, command.argv, env={**unset, **env}, prog_name="outbox")
        finally:
            os.chdir(old)
        return result.exit_code, result.output
    try:
        done = subprocess.run(
            [sys.executable, "-m", "outbox", *command.argv], cwd=cwd, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=TIMEOUT,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail(f"{shown} did not finish within {TIMEOUT} s: {FIX}")
    return done.returncode, done.stdout


def parses(block: Block, command: Command) -> None:
    """The command names real subcommands and options, with values they accept."""
    argv = command.argv
    for operator in ("|", ">", ">>", "&&", ";"):
        if operator in argv:
            argv = argv[: argv.index(operator)]
    try:
        context = cli.make_context("outbox", list(argv))
        group: click.Command = cli
        rest = unparsed(context)
        while isinstance(group, click.Group) and rest:
            name, sub, rest = group.resolve_command(context, rest)
            assert name is not None
            assert sub is not None
            context = sub.make_context(name, rest, parent=context)
            group, rest = sub, unparsed(context)
    except click.BadParameter as exc:
        if isinstance(exc.param and exc.param.type, click.File | click.Path):
            return  # a file the page's reader has, not this test
        pytest.fail(f"{block}, `$ {command.line}` does not parse: {exc.format_message()}")
    except click.UsageError as exc:
        if expected_status(command.output) == 2:
            return  # the page shows this very usage error
        pytest.fail(f"{block}, `$ {command.line}` does not parse: {exc.format_message()}")


def unparsed(context: click.Context) -> list[str]:
    """What a group left for its subcommand (``protected_args`` until click 9)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return [*context.protected_args, *context.args]


def expected_status(output: str) -> int:
    if re.search(r"^Error:", output, re.MULTILINE):
        return 2 if re.search(r"^Usage:", output, re.MULTILINE) else 1
    return 0


_VOLATILE = [
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"), "<uuid>"),
    (re.compile(r"\b[0-9a-f]{16,}\b"), "<hex>"),
    (re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d(:\d\d(\.\d+)?)?(Z|[+-]\d\d:?\d\d)?"), "<time>"),
    (re.compile(r"\d+(\.\d+)?"), "N"),
]


def stable(output: str) -> list[str]:
    """The lines of ``output`` with what changes from run to run replaced."""
    lines = []
    for line in output.strip("\n").splitlines():
        for pattern, placeholder in _VOLATILE:
            line = pattern.sub(placeholder, line)
        lines.append(re.sub(r"\s+", " ", line).strip())
    return [line for line in lines if line]
