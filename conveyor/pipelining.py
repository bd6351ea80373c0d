"""Sends pipelined ahead of their confirms: how far a thread may run ahead of its store.

Redis (replies read later) and RabbitMQ (publisher confirms awaited later) both let a single
publish go out and return at once. What they share is here: each thread keeps its own
window of sends still owed a confirm (a forked child starts with an empty one), waits for
the older half once `SEND_WINDOW` are owed, confirms everything when asked (`confirm`, before
anything acts on a send) and when the thread ends. How a confirm is waited for, and what a
lost connection sends again, is each store's `settle`.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from abc import ABC, abstractmethod
from collections import deque
from typing import Any, Generic, TypeVar

from conveyor.threadend import when_thread_ends

logger = logging.getLogger("conveyor.pipelining")

#: Single publishes a thread may have sent without their reply (Redis) or confirm (RabbitMQ)
#: before the next one waits for the older half: also the most a lost connection can make it
#: send twice (see `Transport.confirm`).
SEND_WINDOW = 64


class Window:
    """One thread's sends still owed a confirm, oldest first."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.unconfirmed: deque[Any] = deque()
        #: Run the thread-end confirm now (once): a store closing ends every window.
        self.end: weakref.finalize[Any, Any] | None = None


W = TypeVar("W", bound=Window)


class Pipelined(ABC, Generic[W]):
    """Per-thread windows of sends confirmed later; a store supplies `new_window` and `settle`."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._windows: weakref.WeakSet[W] = weakref.WeakSet()

    @abstractmethod
    def new_window(self) -> W:
        """An empty window for the calling thread."""

    @abstractmethod
    def settle(self, window: W, leave: int | None) -> None:
        """Take confirms, oldest first, until `leave` remain owed (None: those already in);
        send again what a lost connection left unconfirmed; raise if the store refused one."""

    def release(self, window: W) -> None:
        """Give back what the window holds (a connection) once its thread ended."""

    def window(self) -> W:
        """The calling thread's window (a new one in a forked child: the parent's sends are not ours)."""
        window: W | None = getattr(self._local, "window", None)
        if window is None or window.pid != os.getpid():
            window = self._local.window = self.new_window()
            window.end = when_thread_ends(self._end, window)
            self._windows.add(window)
        return window

    def make_room(self, window: W) -> bool:
        """Before a send: wait for the older half once SEND_WINDOW are owed. True when it did."""
        if len(window.unconfirmed) >= SEND_WINDOW:
            self.settle(window, SEND_WINDOW // 2)
            return True
        return False

    def confirm(self) -> None:
        """Wait for every confirm the calling thread is owed; raise the first refusal."""
        window: W | None = getattr(self._local, "window", None)
        if window is not None and window.unconfirmed and window.pid == os.getpid():
            self.settle(window, 0)

    def end_all(self) -> None:
        """Confirm and release every thread's window now (the store is closing)."""
        for window in list(self._windows):
            if window.end is not None:
                window.end()
        self._local = threading.local()

    def settle_at_end(self, window: W) -> None:
        """How a thread's end confirms its sends (a store may try twice)."""
        self.settle(window, 0)

    def _end(self, window: W) -> None:
        try:
            if window.unconfirmed:
                self.settle_at_end(window)
        except Exception as exc:
            logger.error("%d sends of a thread that ended are unconfirmed: %s", len(window.unconfirmed), exc)
        finally:
            self.release(window)
