"""Wire interoperability with Celery on RabbitMQ, both ways: a real Celery app sends tasks that a
Conveyor worker runs, and Conveyor sends tasks that a real Celery worker runs; each side's
`rpc://` backend gets the results (a migration can move producers and workers one at a time).

The Conveyor side declares its queues without `x-max-priority` (transport option
`max_priority: 0`), as Celery declares its own, so both can use one queue.
"""

from __future__ import annotations

import uuid

import pytest

from tests.conftest import AMQP_DEFAULT, require_service
from tests.contract.test_semantics import wait_for
from tests.processes import E2E

celery = pytest.importorskip("celery", reason="Celery itself is a test-only dependency (the test extra)")


def close_celery(app: object) -> None:
    """Close a Celery app's connections, its rpc result consumer's too (`Celery.close` leaves that
    one open; found by pytest as an unclosed socket in whichever test ran next)."""
    consumer = getattr(app.backend, "result_consumer", None)  # type: ignore[attr-defined]
    if consumer is not None and getattr(consumer, "_connection", None) is not None:
        consumer.stop()
    app.close()  # type: ignore[attr-defined]


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
        close_celery(producer)
    worker.wait_for_log("Task e2e.add[", count=22)


CELERY_SIDE = """
import os

from celery import Celery

app = Celery("celeryside", broker=os.environ["INTEROP_AMQP_URL"], backend="rpc://")
app.conf.task_default_queue = os.environ["INTEROP_QUEUE"]


@app.task(name="celery_side.add")
def add(x, y):
    return x + y
"""


def test_a_celery_worker_runs_what_conveyor_sends_and_conveyor_gets_the_results(e2e: E2E) -> None:
    """The other way round: with `task_message_format="celery"`, Conveyor sends Celery's protocol 2
    as Celery puts it on the wire; a real Celery worker runs it and replies to Conveyor's rpc queue."""
    import os
    import signal
    import subprocess
    import sys

    from conveyor import Celery

    url = require_service("CONVEYOR_AMQP_URL", AMQP_DEFAULT)
    queue = f"interop-{uuid.uuid4().hex[:12]}"
    (e2e.directory / "celeryside.py").write_text(CELERY_SIDE)
    log = e2e.directory / "celery-worker.log"
    with log.open("w") as handle:
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "celeryside", "worker", "-P", "solo", "-Q", queue,
             "--without-heartbeat", "--without-mingle", "--without-gossip", "-l", "info"],
            cwd=e2e.directory, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "INTEROP_AMQP_URL": url, "INTEROP_QUEUE": queue},
        )  # fmt: skip
    app = Celery("producer", broker=url, result_backend="rpc://")
    app.conf.broker_transport_options = {"max_priority": 0, "state_url": f"sqlite:///{e2e.directory / 's.db'}"}
    app.conf.task_message_format = "celery"
    try:
        wait_for(lambda: "ready." in log.read_text() or worker.poll() is not None, timeout=60)
        assert worker.poll() is None, log.read_text()
        assert app.send_task("celery_side.add", (2, 3), queue=queue).get(timeout=30) == 5
        sent = [app.send_task("celery_side.add", (i, 1), queue=queue) for i in range(10)]
        assert [r.get(timeout=30) for r in sent] == [i + 1 for i in range(10)]
        assert "Task celery_side.add[" in log.read_text()
    finally:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(10)
        producer = celery.Celery("cleanup", broker=url)
        with producer.connection_for_write() as connection:
            connection.default_channel.queue_delete(queue)
        close_celery(producer)
        app.close()
