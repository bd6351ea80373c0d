"""RabbitMQ as the broker (S1.2), through real worker processes started by the CLI.

Results and the shared state are kept in a SQLite file of the test's own
(`state_url`); the messages in RabbitMQ, under queue names of the test's own.
"""

from __future__ import annotations

import signal
import time

import pytest

from conveyor import states
from tests.conftest import store_url
from tests.contract.test_semantics import wait_for
from tests.processes import E2E, wait_for_state


@pytest.fixture
def rabbit(e2e: E2E) -> E2E:
    url, options = store_url("amqp", e2e.directory)
    e2e.write_app(broker=url, backend=options["state_url"], options=options, task_acks_late=True)
    return e2e


def test_the_tutorial_flow_on_rabbitmq(rabbit: E2E) -> None:
    """S5.2, S2.3, S5.3: delay().get(), a countdown held by RabbitMQ, priorities; the CLI sees the queue."""
    worker = rabbit.start_worker("-P", "threads", "-c", "2", name="rabbit")
    assert rabbit.app.tasks["e2e.add"].delay(1, 2).get(timeout=30) == 3
    started = time.monotonic()
    later = rabbit.app.tasks["e2e.add"].apply_async((2, 3), countdown=1.5)
    assert later.get(timeout=30) == 5
    assert time.monotonic() - started >= 1.4
    worker.wait_for_log("succeeded in", count=2)
    shown = rabbit.cli("-A", "e2eapp", "status").stdout
    assert "rabbit@e2e" in shown and "celery" in shown


def test_sigkill_mid_task_with_acks_late_loses_nothing(rabbit: E2E) -> None:
    """S3.1: a worker killed mid-task; RabbitMQ gives its delivery back when the connection drops,
    another worker runs it; one SUCCESS."""
    doomed = rabbit.start_worker("-P", "prefork", "-c", "1", name="doomed")
    result = rabbit.app.tasks["e2e.sleep"].delay(1)
    wait_for_state(result, states.STARTED)
    doomed.kill_group()
    rescuer = rabbit.start_worker("-P", "prefork", "-c", "1", name="rescuer")
    assert isinstance(result.get(timeout=30), int)
    history = result.scoreboard["history"]
    assert [h["state"] for h in history] == [states.STARTED, states.STARTED, states.SUCCESS]
    assert [h["worker"] for h in history] == ["doomed@e2e", "rescuer@e2e", "rescuer@e2e"]
    rescuer.wait_for_log("succeeded in")


def test_warm_shutdown_gives_back_what_was_prefetched(rabbit: E2E) -> None:
    worker = rabbit.start_worker("-P", "prefork", "-c", "1", name="warm")
    running = rabbit.app.tasks["e2e.sleep"].delay(1.5)
    queued = [rabbit.app.tasks["e2e.add"].delay(i, i) for i in range(3)]
    wait_for_state(running, states.STARTED)
    worker.signal(signal.SIGTERM)
    assert worker.process.wait(30) == 0
    assert running.state == states.SUCCESS
    assert [r.state for r in queued] == [states.PENDING] * 3
    assert rabbit.app.broker.queue_sizes(["celery"]) == {"celery": 3}
    rabbit.start_worker(name="next")
    assert [r.get(timeout=20) for r in queued] == [0, 2, 4]


def test_bad_input_is_reported_and_the_worker_keeps_running(rabbit: E2E) -> None:
    """Unknown task: FAILURE naming it. Malformed message: a dead letter in RabbitMQ, with the reason."""
    worker = rabbit.start_worker("-P", "threads", name="robust")
    assert rabbit.app.tasks["e2e.add"].delay(1, 1).get(timeout=30) == 2
    rabbit.app.broker.publish_one("celery", b"{not json")
    worker.wait_for_log("dead-letter")
    wait_for(lambda: rabbit.app.broker.dead_letters() != [])  # the log line comes just before the move
    [letter] = rabbit.app.broker.dead_letters()
    assert letter.queue == "celery" and letter.body == b"{not json" and "undecodable" in letter.reason
    assert rabbit.app.tasks["e2e.add"].delay(2, 2).get(timeout=30) == 4
