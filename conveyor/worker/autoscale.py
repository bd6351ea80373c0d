"""`conveyor worker --autoscale=MAX,MIN`: the pool grows under load and shrinks when idle.

Each tick compares the tasks the worker holds (running and waiting for a slot)
with its concurrency: more held than slots grows the pool at once, up to MAX;
fewer shrinks it by one, down to MIN, once no growth happened for
`KEEPALIVE_SECONDS` (Celery's keep-alive: a burst's processes stay a while).
The prefetch window is sized for MAX, so a worker at MIN sees the backlog
that makes it grow. Resizing is `Worker.resize`, as for `pool_grow` and
`pool_shrink`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from conveyor.worker.hooks import Hook

if TYPE_CHECKING:
    from conveyor.worker.worker import Worker

logger = logging.getLogger("conveyor.worker")

#: How long the pool keeps its size after it last grew before it shrinks.
KEEPALIVE_SECONDS = 30.0


class Autoscaler(Hook):
    def __init__(self, maximum: int, minimum: int) -> None:
        self.bounds(maximum, minimum)
        self._last_change = 0.0

    def bounds(self, maximum: int, minimum: int) -> None:
        if not 0 < minimum <= maximum:
            raise ValueError(f"autoscale needs 0 < min <= max, not max={maximum} min={minimum}")
        self.maximum, self.minimum = maximum, minimum

    def start(self, worker: Worker) -> None:
        self.worker = worker

    def tick(self, now: float) -> None:
        worker = self.worker
        demand, size = len(worker.held), worker.concurrency
        target = size
        if demand > size and size < self.maximum:
            target = min(self.maximum, demand)
        elif demand < size and size > self.minimum and now - self._last_change >= KEEPALIVE_SECONDS:
            target = size - 1
        target = max(self.minimum, min(self.maximum, target))  # bounds changed at run time
        if target != size:
            logger.info("Autoscaler: pool %s from %d to %d (%d tasks held)",
                        "grows" if target > size else "shrinks", size, target, demand)  # fmt: skip
            worker.resize(target)
            self._last_change = now
