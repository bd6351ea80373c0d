"""A real worker in a thread of the test process, as Celery's `start_worker` gives one."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from conveyor.worker import Worker

if TYPE_CHECKING:
    from conveyor.app import Conveyor

PING_TASK = "conveyor.ping"


class TestWorker:
    """The running worker (its attributes are the `Worker`'s), with Celery's test-worker methods."""

    __test__ = False  # not a test class, whatever pytest's collection rules say

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def reload(self) -> None:
        """Celery's test worker must reload to see tasks defined after it started; a Conveyor worker
        looks tasks up as they arrive, so there is nothing to do."""

    def __getattr__(self, name: str) -> Any:
        return getattr(self.worker, name)


def _ping() -> str:
    return "pong"


@contextmanager
def start_worker(
    app: Conveyor,
    concurrency: int = 1,
    pool: str = "solo",
    loglevel: str | int | None = None,
    perform_ping_check: bool = True,
    ping_task_timeout: float = 10.0,
    shutdown_timeout: float = 10.0,
    **options: Any,
) -> Iterator[TestWorker]:
    """Run a worker for `app` in a thread until the block ends (Celery's arguments; `loglevel` is
    accepted and the test's logging left as it is). With `perform_ping_check`, a ping task has
    gone through the worker before the block starts."""
    if PING_TASK not in app.tasks:
        app.task(name=PING_TASK)(_ping)
    worker = Worker(app, pool=pool, concurrency=concurrency, hostname=options.pop("hostname", "testworker@conveyor"),
                    **options)  # fmt: skip
    thread = threading.Thread(target=worker.run, name="conveyor-test-worker", daemon=True)
    thread.start()
    try:
        if not worker.ready.wait(shutdown_timeout):
            raise RuntimeError("the test worker did not start")
        if perform_ping_check:
            assert app.tasks[PING_TASK].delay().get(timeout=ping_task_timeout) == "pong"
        yield TestWorker(worker)
    finally:
        worker.stop()
        thread.join(shutdown_timeout)


__all__ = ["TestWorker", "start_worker"]
