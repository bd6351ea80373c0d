"""The adaptive prefetch window, with real worker processes: short tasks are prefetched in
bulk, yet long tasks are shared across workers as Celery's window shares them."""

from __future__ import annotations

import collections
import time

import pytest

from conveyor import group
from tests.processes import E2E


@pytest.fixture(params=["sqlite", "redis"])
def two_workers(request: pytest.FixtureRequest, e2e: E2E) -> E2E:
    if request.param == "redis":
        url, options = request.getfixturevalue("redis_store")
        e2e.write_app(broker=url, options=options)
    else:
        e2e.write_app()
    for name in ("a", "b"):
        e2e.start_worker("-P", "prefork", "-c", "1", name=name)
    return e2e


def test_long_tasks_are_shared_evenly_after_a_burst_of_short_ones(two_workers: E2E) -> None:
    app = two_workers.app
    add, sleep = app.tasks["e2e.add"], app.tasks["e2e.sleep"]
    burst = group(add.s(i, i) for i in range(3000)).apply_async()
    assert burst.get(timeout=60)[-1] == 5998  # the windows grew for these...
    time.sleep(1.5)  # ...and went back to Celery's once the workers were idle
    long = group(sleep.s(1) for _ in range(20)).apply_async()
    long.get(timeout=60)
    ran = collections.Counter(result.scoreboard["worker"] for result in long.results)
    assert sorted(ran) == ["a@e2e", "b@e2e"] and all(9 <= count <= 11 for count in ran.values()), ran


def test_a_worker_logs_when_its_window_changes(two_workers: E2E) -> None:
    app = two_workers.app
    add = app.tasks["e2e.add"]
    group(add.s(i, i) for i in range(3000)).apply_async().get(timeout=60)
    logs = "".join(worker.log for worker in two_workers.workers)
    assert "Prefetch window" in logs
