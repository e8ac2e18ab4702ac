"""The layers hold: outbox never imports the relay, and the places that must agree do.

Read from the source with ``ast`` and from the ``.sql`` files as text; nothing is run.
"""

from __future__ import annotations

import ast
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from outbox_relay.sql import queries as relay_queries

from outbox.sql import queries as outbox_queries

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
# The daemon's source folder is relay/; it installs as outbox_relay (pyproject's package-dir).
FORBIDDEN = ("relay", "outbox_relay")


# -- outbox never imports relay (DESIGN 3) -------------------------------------------------


def outbox_folders() -> dict[str, Path]:
    """The folder of each part of the installed outbox package, by dotted name: outbox/
    itself, and the folders pyproject maps into it (migrations/, examples/ledger/)."""
    mapped = PYPROJECT["tool"]["setuptools"].get("package-dir", {})
    folders = {"outbox": ROOT / "outbox"}
    for package, folder in mapped.items():
        if package == "outbox" or package.startswith("outbox."):
            folders[package] = ROOT / folder
    return folders


def outbox_modules() -> Iterator[tuple[str, Path]]:
    """Every Python file that installs as part of outbox, with its dotted module name.
    A folder mapped into outbox is skipped where it sits under another one (its own
    mapping names it)."""
    folders = outbox_folders()
    for package, folder in folders.items():
        nested = [f for p, f in folders.items() if p != package and f.is_relative_to(folder)]
        for path in sorted(folder.rglob("*.py")):
            if "__pycache__" in path.parts or any(path.is_relative_to(f) for f in nested):
                continue
            parts = [*package.split("."), *path.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            yield ".".join(parts), path


def imported_modules(module: str, path: Path) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every import in the file, at any depth (imports
    inside functions too), relative ones resolved, and importlib.import_module("...")
    and __import__("...") with a literal name."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            yield node.lineno, target
            for alias in node.names:  # `from . import relay` names a module too
                yield node.lineno, f"{target}.{alias.name}"
        elif isinstance(node, ast.Call) and (name := imported_by_call(node)):
            yield node.lineno, name


def imported_by_call(call: ast.Call) -> str | None:
    """The literal module name given to import_module() or __import__(), if any."""
    func = call.func
    called = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
    if called not in {"import_module", "__import__"} or not call.args:
        return None
    first = call.args[0]
    return first.value if isinstance(first, ast.Constant) and isinstance(first.value, str) else None


def test_outbox_includes_its_mapped_folders() -> None:
    """So that the rule below reads the migrations and the demo, not only outbox/."""
    modules = dict(outbox_modules())
    assert "outbox.enqueue" in modules
    assert "outbox.migrations.env" in modules
    assert any(m.startswith("outbox.migrations.versions.") for m in modules)
    assert "outbox.demo.handlers" in modules


def test_outbox_never_imports_relay() -> None:
    """The library runs inside applications; the relay's commands reach the CLI by entry
    point (pyproject's outbox.commands), never by import."""
    found = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for module, path in outbox_modules()
        for line, name in imported_modules(module, path)
        if name.split(".")[0] in FORBIDDEN
    ]
    assert found == []


def modules_under(folder: Path, package: str) -> Iterator[tuple[str, Path]]:
    for path in sorted(folder.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        parts = [*package.split("."), *path.relative_to(folder).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        yield ".".join(parts), path


def test_the_relay_imports_itself_only_relatively() -> None:
    """relay/ installs as outbox_relay: an absolute `from relay...` would fail in a wheel, and
    an absolute `from outbox_relay...` would load a second copy when run from the source."""
    found = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for _, path in modules_under(ROOT / "relay", "relay")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if (isinstance(node, ast.ImportFrom) and not node.level
            and (node.module or "").split(".")[0] in FORBIDDEN)
        or (isinstance(node, ast.Import)
            and any(a.name.split(".")[0] in FORBIDDEN for a in node.names))
    ]  # fmt: skip
    assert found == []


@pytest.mark.parametrize("folder", ["tests", "bench", "examples"])
def test_nothing_imports_the_relay_by_its_source_folder_name(folder: str) -> None:
    """Only outbox_relay is installed; `relay` resolves from a checkout's root alone, and beside
    outbox_relay it would be a second copy of every module (and of every metric)."""
    found = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for module, path in modules_under(ROOT / folder, folder)
        for line, name in imported_modules(module, path)
        if name.split(".")[0] == "relay"
    ]
    assert found == []


# -- the claimed rows: the SELECT list and the positional unpacking agree --------------------


def strip_comments(sql: str) -> str:
    """The statement without ``--`` comments (string literals kept as they are)."""
    return re.sub(r"('(?:[^']|'')*')|--[^\n]*", lambda m: m.group(1) or "", sql)


def top_level(sql: str) -> Iterator[tuple[int, str]]:
    """(position, character) of each character outside parentheses and string literals."""
    depth, quoted = 0, False
    for i, char in enumerate(sql):
        if char == "'":
            quoted = not quoted
        elif not quoted and char == "(":
            depth += 1
        elif not quoted and char == ")":
            depth -= 1
        elif not quoted and depth == 0:
            yield i, char


def final_select_list(statement: str) -> list[str]:
    """The output names of the statement's last top-level SELECT, in order."""
    sql = strip_comments(statement)
    kept = dict(top_level(sql))
    outside = "".join(kept.get(i, " ") for i in range(len(sql)))
    selects = [m.end() for m in re.finditer(r"\bSELECT\b", outside, re.IGNORECASE)]
    assert selects, "no top-level SELECT"
    start = selects[-1]
    end = re.compile(r"\bFROM\b", re.IGNORECASE).search(outside, start)
    assert end is not None, "the last SELECT has no FROM"
    items, begin = [], start
    for i, char in top_level(sql):
        if start <= i < end.start() and char == ",":
            items.append(sql[begin:i])
            begin = i + 1
    items.append(sql[begin : end.start()])
    return [output_name(item) for item in items]


def output_name(item: str) -> str:
    item = " ".join(item.split())
    named = re.fullmatch(r"(?:.+\s+AS\s+|(?:\w+\.)?)(\w+)", item, re.IGNORECASE)
    assert named, f"{item!r} has no name of its own: give it one with AS"
    return named.group(1)


def leftmost_name(expression: ast.expr) -> str | None:
    """The variable an argument is mostly made of: ``x`` in ``x``, ``x or y``."""
    if isinstance(expression, ast.Name):
        return expression.id
    if isinstance(expression, ast.BoolOp):
        return leftmost_name(expression.values[0])
    return None


def unpacked_columns() -> list[str]:
    """The Job field that each position of a claimed row fills, in relay/claim.py's
    ``_jobs``: the row is unpacked into names, and each name is the (leftmost) value of
    one Job(...) keyword argument, which is named as the column is, or ``_column``."""
    path = ROOT / "relay" / "claim.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    functions = [node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)]
    function = next(node for node in functions if node.name == "_jobs")
    comprehension = next(node for node in ast.walk(function) if isinstance(node, ast.ListComp))
    target = comprehension.generators[0].target
    assert isinstance(target, ast.Tuple), "_jobs no longer unpacks rows by position"
    names = [element.id for element in target.elts if isinstance(element, ast.Name)]
    assert len(names) == len(target.elts)
    call = comprehension.elt
    assert isinstance(call, ast.Call)
    fields = {leftmost_name(kw.value): kw.arg for kw in call.keywords}
    # A name with a leading underscore is a column Job does not hold (the claim's position,
    # for relay/floors.py): named as the column is, after the underscore.
    missing = [name for name in names if not name.startswith("_") and fields.get(name) is None]
    assert missing == [], f"unpacked but not passed to Job: {missing}"
    return [name[1:] if name.startswith("_") else str(fields[name]) for name in names]


@pytest.mark.parametrize("statement", ["claim_batch", "claim_isolated"])
def test_claimed_rows_unpack_in_the_order_the_claim_selects_them(statement: str) -> None:
    """_jobs reads claimed rows by position (names cost a lookup per row in the hot path):
    a column added, removed or moved in the SQL alone would shift every field after it."""
    assert final_select_list(relay_queries[statement]) == unpacked_columns()


def test_select_list_reads_aliases_and_qualified_names() -> None:
    sql = "WITH a AS (SELECT x FROM t) SELECT j.uuid, f(y) AS most, 'a,b' AS s -- , z\nFROM a"
    assert final_select_list(sql) == ["uuid", "most", "s"]


# -- the idempotency window (G5) is computed once, identically, on both enqueue paths --------


def cte(statement: str, name: str) -> str:
    """The body of the statement's common table expression ``name``, whitespace folded."""
    sql = strip_comments(statement)
    found = re.search(rf"\b{name}\s+AS\s+\(", sql, re.IGNORECASE)
    assert found, f"no CTE {name!r}"
    depth = 1
    for i in range(found.end(), len(sql)):
        depth += {"(": 1, ")": -1}.get(sql[i], 0)
        if depth == 0:
            return " ".join(sql[found.end() : i].split())
    raise AssertionError(f"CTE {name!r} is not closed")


def test_both_enqueue_paths_remember_idempotency_keys_for_the_same_window() -> None:
    """enqueue (up to COPY_THRESHOLD jobs) and enqueue_bulk_prepare (the COPY path) each
    write outbox_idempotency; a key must be a duplicate on one path exactly when it is on
    the other: same expiry, same test for an expired record, same upsert."""
    small = cte(outbox_queries["enqueue"], "remembered")
    bulk = cte(outbox_queries["enqueue_bulk_prepare"], "remembered")
    assert "now() + CAST(:retention AS interval)" in small
    assert small == bulk


def test_no_python_module_writes_idempotency_keys_itself() -> None:
    """The window lives in enqueue.sql only: no string in outbox's Python (bulk.py
    included) spells out a write to outbox_idempotency."""
    written = re.compile(r"\b(INSERT\s+INTO|UPDATE)\s+outbox_idempotency\b", re.IGNORECASE)
    found = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for _, path in outbox_modules()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and written.search(node.value)
    ]
    assert found == []
