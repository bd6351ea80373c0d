"""An adaptive prefetch window: large for short tasks, Celery's for long ones.

The window is how many deliveries a worker holds (running and waiting for a
slot). A small one keeps long tasks spread across a fleet; a large one lets a
worker run short tasks back to back instead of waiting on the broker between
batches. So each tick the window is sized to hold about `PREFETCH_SECONDS` of
work at the pace tasks ran since the last tick:

    window = concurrency x PREFETCH_SECONDS / mean runtime

never below Celery's `concurrency x worker_prefetch_multiplier` (the floor, all
that long tasks get), never above `MAX_PREFETCH`. A worker that ran nothing
and holds nothing goes back to the floor; and the fetcher takes the grown
window only while the queue is deep (`worker/consumer.py`), so the first
tasks of a new burst are shared as Celery would share them. Prefetched deliveries stay leased and
renewed as any other. `worker_prefetch_adaptive = False` keeps the floor.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from conveyor.execution import Outcome
from conveyor.worker.hooks import Held, Hook

if TYPE_CHECKING:
    from conveyor.worker.worker import Worker

logger = logging.getLogger("conveyor.worker")

#: About this much work (seconds at the measured pace) is held ahead.
PREFETCH_SECONDS = 0.05
#: The most deliveries a worker holds, however short its tasks.
MAX_PREFETCH = 512
#: A new size is applied only when it differs this much (a change costs RabbitMQ a qos call).
HYSTERESIS = 0.25


class AdaptivePrefetch(Hook):
    def start(self, worker: Worker) -> None:
        self.worker = worker
        self._floor = worker.prefetch  # for --autoscale, sized for its most processes
        self._runs = 0
        self._runtime = 0.0

    def finished(self, held: Held, outcome: Outcome) -> None:
        self._runs += 1
        self._runtime += outcome.runtime

    def tick(self, now: float) -> None:
        worker = self.worker
        if not worker.multiplier:
            return  # 0: no limit at all, as in Celery
        # Read and reset beside the loop's finished(): a run counted into the next tick is no harm.
        runs, runtime = self._runs, self._runtime
        self._runs, self._runtime = 0, 0.0
        floor = max(self._floor, worker.concurrency * worker.multiplier)
        fetcher = worker.fetcher
        if fetcher is None:
            return
        mean = runtime / runs if runs else 0.0
        if runs:
            window = round(min(MAX_PREFETCH, max(floor, worker.concurrency * PREFETCH_SECONDS / max(mean, 1e-6))))
        elif not worker.held:
            window = floor  # idle: a new burst starts out shared
        else:
            return  # tasks running, none ended: nothing learnt
        fetcher.floor = floor
        current = worker.prefetch
        if window == current or (window != floor and abs(window - current) <= HYSTERESIS * current):
            return
        worker.prefetch = window
        fetcher.resize(window)
        # Said once a burst starts and once it ends; the steps between are details.
        level = logging.INFO if floor in (window, current) else logging.DEBUG
        logger.log(level, "Prefetch window %d -> %d (%s)", current, window,
                   f"tasks take {1000 * mean:.2f} ms" if runs else "idle")  # fmt: skip
