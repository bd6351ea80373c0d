"""A worker SIGKILLed while running an early-acknowledged task: a peer ends the task FAILURE."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from conveyor.exceptions import WorkerLostError
from tests.processes import E2E


@pytest.mark.parametrize("broker", ["sqlite", "redis"])
def test_a_task_of_a_worker_that_vanished_ends_failure_naming_it(e2e: E2E, broker: str) -> None:
    if broker == "redis":
        from tests.conftest import store_url

        url, options = store_url("redis", e2e.directory)
        e2e.write_app(broker=url, options=options, task_track_started=True)
    else:
        e2e.write_app(task_track_started=True)
    doomed = e2e.start_worker("-P", "prefork", "-c", "1", "-Q", "doomed", name="doomed")
    e2e.start_worker("-P", "threads", name="peer")
    app = e2e.app
    result = app.tasks["e2e.sleep"].apply_async((60,), queue="doomed")

    def listed() -> bool:
        info = app.state.workers().get("doomed@e2e")
        return info is not None and result.id in json.loads(info).get("acked_running", [])

    deadline = time.monotonic() + 15
    while not listed():
        assert time.monotonic() < deadline, "the doomed worker never listed the running task"
        time.sleep(0.1)
    assert result.state == "STARTED"
    os.kill(doomed.process.pid, signal.SIGKILL)
    with pytest.raises(WorkerLostError, match="worker doomed@e2e stopped sending heartbeats"):
        result.get(timeout=30)
    assert result.state == "FAILURE"
