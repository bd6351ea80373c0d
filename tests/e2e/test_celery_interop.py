"""Wire interoperability with Celery on RabbitMQ: a real Celery app sends tasks, a Conveyor worker
runs them, and Celery's own `rpc://` backend gets the results (a migration: Celery producers
stay as they are while workers move to Conveyor).

The Conveyor side declares its queues without `x-max-priority` (transport option
`max_priority: 0`), as Celery declares its own, so both can use one queue.
"""

from __future__ import annotations

import uuid

import pytest

from tests.conftest import AMQP_DEFAULT, require_service
from tests.processes import E2E

celery = pytest.importorskip("celery", reason="Celery itself is a test-only dependency (the test extra)")


def test_a_conveyor_worker_runs_what_celery_sends_and_celery_gets_the_results(e2e: E2E) -> None:
    url = require_service("CONVEYOR_AMQP_URL", AMQP_DEFAULT)
    queue = f"interop-{uuid.uuid4().hex[:12]}"
    state = f"sqlite:///{e2e.directory / 'state.db'}"
    e2e.write_app(broker=url, backend="rpc://", options={"max_priority": 0, "state_url": state})
    worker = e2e.start_worker("-P", "threads", "-Q", queue, name="conveyor")
    producer = celery.Celery("producer", broker=url, backend="rpc://")
    producer.conf.task_default_queue = queue
    try:
        assert producer.send_task("e2e.add", args=(1, 2)).get(timeout=30) == 3
        with pytest.raises(TypeError):  # Conveyor's FAILURE, in Celery's layout, re-raised by Celery
            producer.send_task("e2e.add", args=(1, "x")).get(timeout=30)
        results = [producer.send_task("e2e.add", args=(i, i)) for i in range(20)]
        assert [r.get(timeout=30) for r in results] == [2 * i for i in range(20)]
    finally:
        with producer.connection_for_write() as connection:
            connection.default_channel.queue_delete(queue)
        producer.close()
    worker.wait_for_log("Task e2e.add[", count=22)
