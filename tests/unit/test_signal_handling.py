"""The relay's signal handler takes no lock: a SIGTERM that arrives while the main thread is
writing a log line (structlog's logger holds a lock then) still stops the relay. A handler
that logged itself waited forever for that lock, held by the very thread it interrupted."""

from __future__ import annotations

import subprocess
import sys
import textwrap

BUSY_RELAY = textwrap.dedent(
    """
    import os, signal, sys, threading

    import structlog

    from outbox_relay import log as relay_log, supervisor

    relay_log.configure("json", "info")
    log = structlog.get_logger("test")


    class Busy:
        '''A worker whose main thread does nothing but log, as a busy relay's nearly does.'''

        def __init__(self):
            self.running = threading.Event()
            self.stopped = threading.Event()

        def run(self):
            self.running.set()
            while not self.stopped.is_set():
                log.info("tick")

        def stop(self):
            self.stopped.set()

        def wait_stopped(self, timeout=None):
            return self.stopped.wait(timeout)


    worker = Busy()

    def terminate():
        worker.running.wait()
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=terminate, daemon=True).start()
    sys.exit(supervisor.run_worker(worker))
    """
)


def test_sigterm_in_the_middle_of_a_log_line_stops_the_relay() -> None:
    for attempt in range(12):
        try:
            result = subprocess.run(
                [sys.executable, "-c", BUSY_RELAY],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=20,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            raise AssertionError(f"run {attempt}: SIGTERM did not stop the relay") from None
        stopping = [line for line in result.stderr.splitlines() if b"stopping" in line]
        assert result.returncode == 0, result.stderr[-2000:]
        assert len(stopping) == 1, "the first signal is logged once"
