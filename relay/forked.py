"""Relay processes forked from their supervisor.

A relay process started as a fresh interpreter imports everything again (about 0.35 s of
CPU) beside a supervisor that has already done so: with ``--processes 2`` the drain of a
backlog started later than one process's. The supervisor's first processes are forked from it
instead, once it has imported and checked everything and before it starts any thread, so each
begins where the supervisor stands. A process that dies is started again as a fresh interpreter
(its supervisor has threads by then, and a fork must not copy a lock another thread holds).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Mapping
from typing import Protocol

from . import metrics

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Child(Protocol):
    """A relay process, as the supervisor sees it: a subprocess.Popen, or a Forked."""

    pid: int
    returncode: int | None

    def poll(self) -> int | None: ...

    def send_signal(self, sig: int) -> None: ...

    def kill(self) -> None: ...


class Forked:
    """A forked process, answering as subprocess.Popen does (a signal's exit is -signum)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def can_fork() -> bool:
    """Whether this process may fork a relay: it runs one thread only (the application's
    import may have started others, and a fork copies the locks they hold, not them)."""
    return hasattr(os, "fork") and threading.active_count() == 1


def fork(run: Callable[[], int], environ: Mapping[str, str]) -> Forked:
    """Fork a process that sets ``environ``, writes its metrics to files and exits with what
    ``run`` returns. It never returns into the supervisor's code."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()  # else what the supervisor has buffered is written twice
    # A stop signal must not reach the child while it still has the supervisor's handler: it
    # would run the supervisor's code there. Blocked across the fork, it waits for the default.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        pid = os.fork()
        if pid == 0:
            _child(run, environ)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    return Forked(pid)


def _child(run: Callable[[], int], environ: Mapping[str, str]) -> None:
    code = 1
    try:
        for sig in STOP_SIGNALS:
            # As a fresh interpreter would: a stop signal before the relay sets its own
            # handlers ends the process (the supervisor counts that as a clean stop).
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        os.environ.update(environ)
        metrics.write_to_files()
        code = run()
    except SystemExit as exc:
        code = 0 if exc.code is None else exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os._exit(code)
