"""Create ``.bench-venv`` at the repository root with the peer job queues installed.

    python -m bench.peers.install [--force]

Idempotent: a stamp file inside the venv records the requirements it was built with; when
it matches, nothing is done. The drivers in ``bench/peers/`` run with ``python_path()``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".bench-venv"
STAMP = VENV / "bench-peers-stamp.json"
REQUIREMENTS = ["procrastinate", "pgqueuer", "asyncpg", "psycopg[binary,pool]", "psutil"]


def python_path() -> Path:
    """The venv's python executable (it may not exist before ``ensure()``)."""
    if sys.platform == "win32":
        return VENV / "Scripts" / "python.exe"
    return VENV / "bin" / "python"


def _stamp() -> dict[str, object]:
    return {"requirements": REQUIREMENTS, "python": sys.version.split()[0]}


def installed() -> bool:
    """True when the venv exists and was built with the current requirements."""
    try:
        return python_path().exists() and json.loads(STAMP.read_text()) == _stamp()
    except (OSError, ValueError):
        return False


def ensure(force: bool = False) -> Path:
    """Build the venv unless it is already up to date; return its python."""
    if installed() and not force:
        return python_path()
    STAMP.unlink(missing_ok=True)
    subprocess.run(
        [sys.executable, "-m", "venv", "--clear" if force else "--upgrade-deps", str(VENV)],
        check=True,
    )
    py = str(python_path())
    subprocess.run([py, "-m", "pip", "install", "--quiet", "--upgrade", "pip"], check=True)
    subprocess.run([py, "-m", "pip", "install", "--quiet", "--upgrade", *REQUIREMENTS], check=True)
    STAMP.write_text(json.dumps(_stamp()))
    return python_path()


def versions() -> dict[str, str]:
    """Installed versions of the peers, as reported by the venv."""
    code = (
        "import json, importlib.metadata as m; "
        "print(json.dumps({n: m.version(n) for n in ('procrastinate', 'pgqueuer', 'asyncpg', "
        "'psycopg', 'psutil')}))"
    )
    out = subprocess.run(
        [str(python_path()), "-c", code], check=True, capture_output=True, text=True
    )
    return dict(json.loads(out.stdout))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild the venv from scratch")
    args = parser.parse_args(argv)
    py = ensure(force=args.force)
    print(py)
    print(json.dumps(versions()), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
