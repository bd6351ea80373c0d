"""The worker loop's inbox: events from other threads, handled one at a time, in order.

The fetcher posts deliveries, the pool its reports, signals and the
housekeeping thread their requests; the worker's loop thread handles them in
batches. On an idle worker, waking the loop's thread for every event is most
of a round trip's cost (a thread asleep on an idle CPU takes 0.1-0.2 ms to
run again, more on a virtual machine). So a thread that posts while nothing
is queued and nobody is handling (`post_or_handle`) handles its event itself,
under the same lock the loop holds while it handles a batch: an idle
worker's delivery goes from the fetcher's thread straight to the pool, and a
finished task's result is written by the thread that ran it. Under load
events queue up and the loop takes them in batches, as before.

Order is kept because events are only taken from the queue under the lock:
whoever holds it has handled everything posted before what it handles. The
loop waits on a separate bell, not on the queue itself, for that reason: a
loop blocked in `get()` would take an event before holding the lock, and an
event posted after it could be handled first.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

Event = TypeVar("Event")


class Inbox(Generic[Event]):
    def __init__(self, handle: Callable[[list[Event]], None], max_batch: int) -> None:
        """`handle(events)` is called with the lock held, by the loop or by a poster."""
        self._handle = handle
        self._max_batch = max_batch
        self._events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self._bell: queue.SimpleQueue[None] = queue.SimpleQueue()
        self._lock = threading.Lock()

    def post(self, event: Event) -> None:
        """Queue an event for the loop (any thread; safe in a signal handler)."""
        self._events.put(event)
        self._bell.put(None)

    def post_or_handle(self, event: Event) -> bool:
        """Handle the event on this thread if nothing is queued or being handled, else post it.

        True when it was handled here. Not for code where an asynchronous
        exception may be raised (a task's own code on a thread pool): it would
        land with the lock held.
        """
        if self._lock.acquire(blocking=False):
            try:
                if self._events.empty():
                    self._handle([event])
                    return True
            finally:
                self._lock.release()
        self.post(event)
        return False

    def ring(self) -> None:
        """Wake the loop to look again (a deadline changed while it waited)."""
        self._bell.put(None)

    def wait(self, timeout: float) -> bool:
        """Block until the bell rings or the timeout passes (without the lock); True if it rang."""
        try:
            self._bell.get(timeout=timeout)
        except queue.Empty:
            return False
        return True

    @contextmanager
    def taking(self) -> Iterator[list[Event]]:
        """Hold the lock and take what is queued (at most a batch)."""
        with self._lock:
            while True:
                try:
                    self._bell.get_nowait()
                except queue.Empty:
                    break
            events = self._take(self._max_batch)
            if len(events) == self._max_batch:
                self._bell.put(None)  # more than a batch: the rest next time round
            yield events

    def close(self) -> None:
        """Take the lock for good: from now on every event is queued, for `leftovers()`."""
        self._lock.acquire()

    def leftovers(self) -> list[Event]:
        """After `close()`: everything queued."""
        return self._take(None)

    def _take(self, limit: int | None) -> list[Event]:
        events: list[Event] = []
        while limit is None or len(events) < limit:
            try:
                events.append(self._events.get_nowait())
            except queue.Empty:
                break
        return events

    def empty(self) -> bool:
        return self._events.empty()
