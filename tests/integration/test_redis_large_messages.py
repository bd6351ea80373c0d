"""Large messages on Redis reach an idle worker at once: never through pub/sub's output buffer
(Redis cuts a subscriber past 32 MB, and the message then waited out its lease)."""

from __future__ import annotations

import time

import pytest

from tests.conftest import store_url
from tests.processes import E2E


@pytest.mark.parametrize("megabytes", [1, 40, 100])
def test_a_large_argument_round_trips_to_an_idle_worker_in_seconds(e2e: E2E, megabytes: int) -> None:
    url, options = store_url("redis", e2e.directory)
    e2e.write_app(broker=url, options=options)
    worker = e2e.start_worker()
    assert e2e.app.tasks["e2e.size"].delay("warm").get(timeout=10) == 4
    time.sleep(1)  # idle: the worker's fetcher waits, registered for a hand-off
    data = "x" * (megabytes * 1024 * 1024)
    started = time.monotonic()
    assert e2e.app.tasks["e2e.size"].delay(data).get(timeout=60) == len(data)
    assert time.monotonic() - started < 5
    assert "Connection closed" not in worker.log
