"""The prefetch window's rule: about 50 ms of work held ahead, never below Celery's window."""

from __future__ import annotations

import pytest

from conveyor import Celery
from conveyor.execution import Outcome
from conveyor.worker import Worker
from conveyor.worker.consumer import Fetcher
from conveyor.worker.prefetch import MAX_PREFETCH, AdaptivePrefetch


@pytest.fixture
def worker() -> Worker:
    app = Celery("window", broker="memory://window")
    worker = Worker(app, pool="threads", concurrency=2, prefetch_multiplier=4)
    worker.fetcher = Fetcher(app.broker, worker.queues, worker.prefetch, lambda deliveries: None)
    return worker


def ran(hook: AdaptivePrefetch, runtime: float, times: int = 10) -> None:
    for i in range(times):
        hook.finished(None, Outcome(i, f"t{i}", "SUCCESS", runtime, "None"))  # type: ignore[arg-type]
    hook.tick(0.0)


def test_short_tasks_grow_the_window_and_long_ones_keep_celerys(worker: Worker) -> None:
    hook = AdaptivePrefetch()
    hook.start(worker)
    assert worker.prefetch == 8  # concurrency x multiplier
    ran(hook, 0.002)  # 2 processes x 50 ms / 2 ms
    assert worker.prefetch == 50 and worker.fetcher is not None and worker.fetcher.window == 50
    ran(hook, 0.000_01)
    assert worker.prefetch == MAX_PREFETCH
    ran(hook, 1.0)
    assert worker.prefetch == 8 and worker.fetcher.window == 8


def test_an_idle_worker_goes_back_to_celerys_window(worker: Worker) -> None:
    hook = AdaptivePrefetch()
    hook.start(worker)
    ran(hook, 0.000_01)
    assert worker.prefetch == MAX_PREFETCH
    hook.tick(0.5)  # nothing ran, nothing held
    assert worker.prefetch == 8


def test_small_changes_are_not_applied(worker: Worker) -> None:
    hook = AdaptivePrefetch()
    hook.start(worker)
    ran(hook, 0.002)
    assert worker.prefetch == 50
    ran(hook, 0.0019)  # 52: within a quarter of 50
    assert worker.prefetch == 50


def test_no_limit_stays_no_limit(worker: Worker) -> None:
    worker.multiplier = 0
    hook = AdaptivePrefetch()
    hook.start(worker)
    before = worker.prefetch
    ran(hook, 1.0)
    assert worker.prefetch == before
