"""RabbitMQ as the broker (S1.2), through real worker processes started by the CLI.

Results and the shared state are kept in a SQLite file of the test's own
(`state_url`); the messages in RabbitMQ, under queue names of the test's own.
Reliability (SIGKILL, shutdowns, bad input) on RabbitMQ: tests/e2e/test_reliability.py.
"""

from __future__ import annotations

import time

import pytest

from tests.processes import E2E


@pytest.fixture
def rabbit(e2e: E2E) -> E2E:
    e2e.write_rabbitmq_app(task_acks_late=True)
    return e2e


def test_the_tutorial_flow_on_rabbitmq(rabbit: E2E) -> None:
    """S5.2, S2.3: delay().get(), a countdown held by RabbitMQ; `conveyor status` sees worker and queue."""
    worker = rabbit.start_worker("-P", "threads", "-c", "2", name="rabbit")
    assert "- ** transport:   amqp://guest:***@" in worker.log  # no password in the log
    assert "- ** state:       sqlite:///" in worker.log  # where revocations, rate limits and beat live
    assert rabbit.app.tasks["e2e.add"].delay(1, 2).get(timeout=30) == 3
    started = time.monotonic()
    later = rabbit.app.tasks["e2e.add"].apply_async((2, 3), countdown=1.5)
    assert later.get(timeout=30) == 5
    assert time.monotonic() - started >= 1.4
    worker.wait_for_log("succeeded in", count=2)
    shown = rabbit.cli("-A", "e2eapp", "status").stdout
    assert "rabbit@e2e" in shown and "celery" in shown
