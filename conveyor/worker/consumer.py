"""The fetcher: keeps a worker's prefetch window full from the broker.

One thread asks the broker for the window's free slots, half the window
(`concurrency x prefetch_multiplier`) at most per fetch, blocking in the broker while nothing is
due, so an idle worker wakes the moment a message arrives and a busy one takes
messages in batches. Slots are given back by the worker as deliveries are
acknowledged, requeued or dead-lettered.

A window grown for short tasks (`worker/prefetch.py`) is used only while the
queue is deep: after a fetch that found fewer messages than it asked for, the
next asks for half the `floor` (Celery's window) at most, so the first tasks of
a new burst, which that fetch waits for, are shared as Celery shares them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

from conveyor.brokers.base import Delivery, Transport
from conveyor.exceptions import BrokerError

logger = logging.getLogger("conveyor.worker")

#: How long one fetch blocks before the fetcher checks whether it should stop.
FETCH_TIMEOUT = 1.0
MAX_BACKOFF = 10.0


class Fetcher:
    def __init__(
        self,
        broker: Transport,
        queues: Sequence[str],
        window: int,
        deliver: Callable[[list[Delivery]], None],
    ) -> None:
        self.broker = broker
        self.queues = list(queues)
        self.window = window
        self.deliver = deliver
        self._free = window
        self._low_water = max(1, window // 2)
        #: Celery's window: half of it is the most a fetch asks for while the queue is shallow.
        self.floor = window
        self._deep = False
        self._changed = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="conveyor-fetcher", daemon=True)

    def start(self) -> None:
        self.broker.qos(self.window)  # a fetch asks for half of it at most
        self._thread.start()

    def release(self, slots: int = 1) -> None:
        """Give back window slots (a delivery was acked, requeued or dead-lettered)."""
        with self._changed:
            self._free = min(self.window, self._free + slots)
            # The fetcher sleeps until half the window is free: waking it sooner is a wasted switch.
            if self._free >= self._low_water:
                self._changed.notify()

    def resize(self, window: int) -> None:
        """Hold up to `window` deliveries from now on (the pool grew or shrank)."""
        with self._changed:
            self._free += window - self.window
            self.window, self._low_water = window, max(1, window // 2)
            self._changed.notify()
        self.broker.qos(window)

    def consume(self, queues: Sequence[str]) -> None:
        """Fetch from these queues from now on (a fetch under way ends first)."""
        self.queues = list(queues)
        self.broker.interrupt()

    def is_current_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def stop(self) -> None:
        with self._changed:
            self._stopped = True
            self._changed.notify()
        self.broker.interrupt()

    def join(self, timeout: float | None = None) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        failures = 0
        while True:
            with self._changed:
                # Under load, wait until half the window is free: one fetch then takes a
                # batch, not a message per finished task. An idle worker's window is
                # all free, so it fetches at once and nothing waits. A fetch takes at
                # most half the window: one half runs while the next is on the wire.
                while self._free < self._low_water and not self._stopped:
                    self._changed.wait()
                if self._stopped:
                    return
                wanted = min(self._free, self._low_water if self._deep else max(1, self.floor // 2))
                self._free -= wanted
            try:
                deliveries = self.broker.fetch(self.queues, wanted, FETCH_TIMEOUT)
            except BrokerError as exc:
                deliveries = []
                failures += 1
                delay = min(MAX_BACKOFF, 0.1 * 2**failures)
                if failures == 1:
                    logger.error("Cannot fetch from broker %s: %s; retrying with backoff", self.broker.display_url, exc)
                time.sleep(delay)
            else:
                if failures:
                    logger.warning(
                        "Broker %s is reachable again after %d failed fetches", self.broker.display_url, failures
                    )
                    failures = 0
            self._deep = len(deliveries) == wanted
            self.release(wanted - len(deliveries))
            if deliveries and self._stopped:
                # Fetched while stopping: nobody will run these, give them back now.
                self._give_back(deliveries)
            elif deliveries:
                self.deliver(deliveries)

    def _give_back(self, deliveries: list[Delivery]) -> None:
        try:
            self.broker.requeue(deliveries)
        except BrokerError as exc:
            logger.error("Could not requeue %d deliveries (their leases will lapse): %s", len(deliveries), exc)
