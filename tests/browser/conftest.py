"""The console in a real browser: Debian's chromium driven by Playwright, against ``outbox ui``
served as a subprocess on a free port of its own (each xdist worker starts its own).

Playwright's own browser download is never used: the tests drive the chromium found on the
machine (``.ci/run`` installs it) and are skipped, saying so, only where there is none.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
from playwright.sync_api import Browser, Page, ViewportSize, sync_playwright

ROOT = Path(__file__).resolve().parents[2]
#: Where the documentation's screenshots live (docs/howto/console.md shows them).
SCREENSHOTS = ROOT / "docs" / "images" / "console"
#: Set to 1 to write the screenshots into :data:`SCREENSHOTS`; otherwise they are taken all
#: the same, into the test's temporary directory, so that a test run leaves the tree as it was.
UPDATE_SCREENSHOTS = "OUTBOX_UPDATE_SCREENSHOTS"
CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
VIEWPORT: ViewportSize = {"width": 1280, "height": 800}
#: Seconds a console has to answer after it was started.
STARTUP = 30.0


def chromium() -> str | None:
    """The chromium executable of this machine, if it has one."""
    names = ("chromium", "chromium-browser")
    for candidate in ("/usr/bin/chromium", *(shutil.which(name) for name in names)):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = chromium()
    if executable is None:
        pytest.skip(
            "no chromium on this machine (looked for /usr/bin/chromium, chromium and "
            "chromium-browser on PATH): install it with `apt-get install chromium`, as .ci/run does"
        )
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A page in a context of its own (no cookies or cache shared between tests)."""
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(10_000)
    opened = context.new_page()
    try:
        yield opened
    finally:
        context.close()


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    if os.environ.get(UPDATE_SCREENSHOTS) == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        return SCREENSHOTS
    return tmp_path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serving(dsn: str, *options: str) -> Iterator[str]:
    """``outbox ui`` on a free loopback port, until the block ends; yields its base URL."""
    port = free_port()
    outbox = Path(sys.executable).with_name("outbox")
    command = [str(outbox), "--dsn", dsn, "ui", "--addr", f"127.0.0.1:{port}", *options]
    with tempfile.TemporaryFile() as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_until_answering(url, process, output)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_until_answering(url: str, process: subprocess.Popen[bytes], output: IO[bytes]) -> None:
    deadline = time.monotonic() + STARTUP
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            with urllib.request.urlopen(f"{url}/static/console.css", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.05)
    output.seek(0)
    said = output.read().decode(errors="replace")
    process.kill()
    raise AssertionError(
        f"outbox ui did not answer at {url} within {STARTUP}s (exit code {process.poll()}):\n{said}"
    )


@pytest.fixture(scope="module")
def console(dsn: str) -> Iterator[str]:
    """A console with actions allowed. Its overview keeps the per-minute counts of minutes
    that can no longer change in memory: only the tour test loads that overview, after it has
    written the history it charts."""
    with serving(dsn, "--allow-actions") as url:
        yield url


@pytest.fixture(scope="module")
def read_only_console(dsn: str) -> Iterator[str]:
    with serving(dsn) as url:
        yield url
