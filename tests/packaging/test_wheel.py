"""The wheel is the product: built from this tree and installed into a new virtual
environment (no site packages, nothing of this checkout on its path), it holds every
package and data file, finds the relay's command through its entry point, and migrates a
database.

The wheel is built without build isolation, by the setuptools of the running environment
(the dev extra requires one new enough), from a copy of the tree, so that no build/ or
egg-info folder of the checkout leaks stale files into it. Its runtime dependencies come
from the package index, resolved by pip as they would be for a user (so a dependency that
is imported but not declared shows). About 10 seconds; it needs the index to answer.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from outbox import migrate
from outbox.testing import temporary_database

pytestmark = [pytest.mark.packaging, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PROJECT = PYPROJECT["project"]
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]
DISTRIBUTION = PROJECT["name"]
#: What the copy of the tree leaves out: environments, caches and earlier builds.
NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", ".bench-venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache",
    ".hypothesis", ".cache",
)  # fmt: skip


def run(args: Sequence[str | Path], *, env: dict[str, str] | None = None, timeout: float = 120,
        check: bool = True) -> subprocess.CompletedProcess[str]:  # fmt: skip
    done = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=timeout, env=env,
        cwd=tempfile.gettempdir(),  # not the checkout, whose outbox/ would shadow the wheel's
    )  # fmt: skip
    if check and done.returncode != 0:
        pytest.fail(f"{' '.join(map(str, args))} exited {done.returncode}:\n"
                    f"{done.stdout}\n{done.stderr}")  # fmt: skip
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE)
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", work / "dist", source])  # fmt: skip
    (built,) = (work / "dist").glob("*.whl")
    return built


@pytest.fixture(scope="module")
def bin_dir(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The scripts folder of a new virtual environment with the wheel installed."""
    venv = tmp_path_factory.mktemp("venv")
    run([sys.executable, "-m", "venv", "--without-pip", venv])
    # This environment's pip installs into the new one (pip --python): no pip of its own
    # to bootstrap, and the same configuration and cache.
    run([sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install",
         "--quiet", wheel], timeout=240)  # fmt: skip
    return venv / "bin"


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment less what would lead the new one back to this checkout
    or this configuration (virtualenv, Python path, OUTBOX_* settings)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OUTBOX_", "PYTHON", "VIRTUAL_ENV"))
    }
    return {**env, **extra}


def wheel_names(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


def package_folder(package: str) -> Path:
    """The source folder of ``package``, through pyproject's package-dir mapping."""
    mapped: dict[str, str] = SETUPTOOLS.get("package-dir", {})
    top = max((p for p in mapped if package == p or package.startswith(f"{p}.")),
              key=len, default=None)  # fmt: skip
    if top is None:
        return Path(*package.split("."))
    return Path(mapped[top], *[part for part in package[len(top) + 1 :].split(".") if part])


def source_folders() -> list[Path]:
    return [package_folder(package) for package in SETUPTOOLS["packages"]]


def source_files(pattern: str) -> Iterator[str]:
    """Where each source file matching ``pattern`` lands in the wheel, through pyproject's
    package list and package-dir mapping."""
    for package in SETUPTOOLS["packages"]:
        for path in sorted((ROOT / package_folder(package)).glob(pattern)):
            yield "/".join([*package.split("."), path.name])


def test_wheel_holds_outbox_and_relay_and_nothing_else(wheel: Path) -> None:
    tops = {name.split("/")[0] for name in wheel_names(wheel)}
    dist_info = f"{DISTRIBUTION.replace('-', '_')}-{PROJECT['version']}.dist-info"
    assert tops == {"outbox", "outbox_relay", dist_info}


def test_every_module_and_package_of_the_tree_is_in_the_wheel(wheel: Path) -> None:
    """A package missing from pyproject's list would be left out without a word."""
    names = set(wheel_names(wheel))
    listed = [ROOT / folder for folder in source_folders()]
    for top in ("outbox", "relay"):
        for init in (ROOT / top).rglob("__init__.py"):
            if "__pycache__" not in init.parts:
                assert init.parent in listed, f"{init.parent} is not in pyproject's packages"
    expected = set(source_files("*.py"))
    assert {"outbox/migrations/env.py", "outbox/demo/run.py", "outbox_relay/cli.py"} <= expected
    assert expected - names == set()


def test_wheel_holds_the_sql_files_migrations_and_type_marker(wheel: Path) -> None:
    names = set(wheel_names(wheel))
    sql = set(source_files("*.sql"))
    assert {"outbox/sql/enqueue.sql", "outbox_relay/sql/claim.sql"} <= sql
    versions = set(source_files("0*.py"))  # migrations/versions/0001_core.py, ...
    assert "outbox/migrations/versions/0001_core.py" in versions
    data = {"outbox/migrations/script.py.mako", "outbox/py.typed"}
    assert (sql | versions | data) - names == set()


def test_wheel_holds_every_template_and_static_file_of_the_console(wheel: Path) -> None:
    names = set(wheel_names(wheel))
    folder = ROOT / "outbox" / "console"
    files = {
        path.relative_to(ROOT).as_posix()
        for pattern in ("templates/*.html", "static/*")
        for path in folder.glob(pattern)
    }
    assert {"outbox/console/templates/base.html", "outbox/console/static/htmx.min.js"} <= files
    assert files - names == set()


def test_installed_distribution_is_known_by_its_name(bin_dir: Path) -> None:
    probe = (
        "import importlib.metadata as m, sys; d = m.distribution(sys.argv[1]); "
        "print(d.version); print(*sorted(f'{e.group}:{e.name}={e.value}' for e in d.entry_points))"
    )
    done = run([bin_dir / "python", "-c", probe, DISTRIBUTION], env=clean_env())
    version, entry_points = done.stdout.splitlines()
    assert version == PROJECT["version"]
    assert entry_points.split() == [
        "console_scripts:outbox=outbox.cli:main",
        "outbox.commands:relay=outbox_relay.cli:command",
    ]


def test_installed_outbox_comes_from_the_environment_not_this_checkout(bin_dir: Path) -> None:
    probe = "import outbox, outbox_relay; print(outbox.__file__); print(outbox_relay.__file__)"
    done = run([bin_dir / "python", "-c", probe], env=clean_env())
    for line in done.stdout.splitlines():
        assert Path(line).is_relative_to(bin_dir.parent), line


def test_console_script_answers_help_with_the_relay_command(bin_dir: Path) -> None:
    done = run([bin_dir / "outbox", "--help"], env=clean_env())
    for command in ("migrate", "status", "jobs", "audit", "relay", "ui"):
        assert f"\n  {command} " in done.stdout, done.stdout
    relay = run([bin_dir / "outbox", "relay", "--help"], env=clean_env())
    assert "--app MODULE:REGISTRY" in relay.stdout


def test_console_script_reports_the_distribution_version(bin_dir: Path) -> None:
    done = run([bin_dir / "outbox", "--version"], env=clean_env())
    assert done.stdout.strip() == f"outbox, version {PROJECT['version']}"


def test_console_script_migrates_a_new_database(bin_dir: Path, server: str) -> None:
    with temporary_database(server, prefix="outbox_wheel", migrated=False) as dsn:
        env = clean_env(OUTBOX_DSN=dsn)
        before = run([bin_dir / "outbox", "migrate", "--check"], env=env, check=False)
        assert before.returncode == 1, before.stdout + before.stderr
        done = run([bin_dir / "outbox", "migrate"], env=env)
        assert f"upgraded from nothing to {migrate.head()}" in done.stdout
        after = run([bin_dir / "outbox", "migrate", "--check"], env=env)
        assert f"schema is at head ({migrate.head()})" in after.stdout
