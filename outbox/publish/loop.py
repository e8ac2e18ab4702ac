"""An asyncio event loop in a thread of its own, for targets whose client is asyncio
(RabbitMQ, NATS, webhooks): the relay's handler threads hand it coroutines and wait for
their results, so one connection serves them all."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import structlog

from outbox.publish.target import Delivery

log = structlog.get_logger("outbox.publish")

T = TypeVar("T")


class LoopThread:
    """Started on first use and made anew in a forked child, where the parent's loop has no
    thread; ``on_new`` then resets what the target keeps on the loop (its connection)."""

    def __init__(self, name: str, on_new: Callable[[], None] | None = None) -> None:
        self.name, self._on_new = name, on_new
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    def get(self) -> asyncio.AbstractEventLoop:
        """The running loop, started if none runs in this process."""
        with self._lock:
            if self._loop is None or self._pid != os.getpid():
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name=self.name, daemon=True)
                thread.start()
                self._loop, self._thread, self._pid = loop, thread, os.getpid()
                if self._on_new is not None:
                    self._on_new()
            return self._loop

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coroutine, self.get())

    def close(
        self, closing: Callable[[], Coroutine[Any, Any, None]], timeout: float, what: str
    ) -> None:
        """Run ``closing`` on the loop (within ``timeout``), then stop the loop and its
        thread. Never raises: the relay is stopping; a failure is logged with ``what``."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None or self._pid != os.getpid():
            return
        try:
            asyncio.run_coroutine_threadsafe(closing(), loop).result(timeout)
        except Exception as error:
            log.warning(f"{what} did not close cleanly", error=str(error) or type(error).__name__)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        if not thread.is_alive():
            loop.close()


class Call:
    """The messages of one ``publish_many`` call handed to a loop: their answers, filled in
    on the loop's thread as they come (or fail to), and one future the calling thread waits
    on, set with the last answer. One hand-over per call, not one per message."""

    __slots__ = ("abandoned", "answers", "done", "left")

    def __init__(self, answers: list[Delivery | Exception | None]) -> None:
        self.answers = answers
        self.left = sum(1 for answer in answers if answer is None)
        self.done: concurrent.futures.Future[None] = concurrent.futures.Future()
        #: Set by the caller that stopped waiting: its messages not yet sent are not sent.
        self.abandoned = False
        if not self.left:
            self.done.set_result(None)

    def settle(self, index: int, answer: Delivery | Exception) -> None:
        """On the loop's thread only; the first answer of a message stands."""
        if self.answers[index] is not None:
            return
        self.answers[index] = answer
        self.left -= 1
        if not self.left:
            self.done.set_result(None)
