"""RabbitMQ restarts under a running worker (S3.1): it reconnects, and no task is lost.

The test starts a RabbitMQ node of its own (its own name, ports and data
directory) and stops only that one.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conveyor import states
from tests.processes import E2E, RabbitMQServer, flow_through_restart

# Booting a node takes both cores for seconds: kept off the second-timed beat tests' worker.
pytestmark = pytest.mark.xdist_group("clock")


@pytest.fixture
def rabbitmq(tmp_path: Path):  # type: ignore[no-untyped-def]
    server = RabbitMQServer(tmp_path / "rabbitmq")
    if not Path(RabbitMQServer.BINARY).exists():
        reason = "rabbitmq-server is not installed"
        if os.environ.get("CONVEYOR_REQUIRE_SERVICES") == "1":
            pytest.fail(f"{reason} (CONVEYOR_REQUIRE_SERVICES=1)")
        pytest.skip(reason)
    server.start()
    yield server
    server.stop()


def test_worker_survives_a_rabbitmq_restart_and_no_task_is_lost(e2e: E2E, rabbitmq: RabbitMQServer) -> None:
    """Restart RabbitMQ while 5,000 tasks flow: every task ends SUCCESS; the worker says once that it
    lost the broker and once that it is back. Deliveries unacknowledged when the connection dropped are
    given out again by RabbitMQ (at-least-once), so those few may run twice; none more."""
    state = f"sqlite:///{e2e.directory / 'state.db'}"
    # The window is kept at Celery's (no adaptive growth): the bound below is exactly it.
    e2e.write_app(broker=rabbitmq.url, backend=state, options={"state_url": state}, worker_prefetch_adaptive=False)
    worker = e2e.start_worker("-P", "threads", "-c", "4", name="survivor")
    twice = 0
    for message in flow_through_restart(e2e, rabbitmq, 5_000):
        history = [h["state"] for h in e2e.app.AsyncResult(message.id).scoreboard["history"]]
        assert history.count(states.SUCCESS) in (1, 2), (message.id, history)
        twice += history.count(states.SUCCESS) == 2
    # At most what RabbitMQ had left unacknowledged with the worker: its prefetch window
    # (concurrency x prefetch multiplier), finished tasks whose acks were on their way included.
    window = 4 * 4
    assert twice <= window, twice
    assert "Cannot fetch from broker" in worker.log and "reachable again" in worker.log
    assert worker.log.count("Cannot fetch from broker") == 1
