"""S2.3: a message a broker hands out before its eta waits again for the rest.

RabbitMQ's delay ladder ends at 49 days (its longest TTL): a later eta arrives
early, and the worker sends it back to wait. Shown here on the in-memory broker
by publishing a message with an eta but no broker-side delay.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta

import pytest

from conveyor import Celery, messages
from conveyor.brokers import Outgoing
from tests.conftest import contract_app, store_url
from tests.contract.test_worker_contract import running

RUNS: dict[str, float] = {}


@pytest.fixture
def app(tmp_path) -> Iterator[Celery]:  # type: ignore[no-untyped-def]
    application = contract_app("early", store_url("memory", tmp_path))

    @application.task(name="e.stamp")
    def stamp(key: str) -> None:
        RUNS[key] = time.time()

    yield application
    application.close()


def test_a_message_delivered_before_its_eta_runs_at_its_eta(app: Celery) -> None:
    eta = messages.utcnow() + timedelta(seconds=1.5)
    message, queue = app.producer.message("e.stamp", ("early",), call=app.producer.options({"eta": eta}))
    body = message.encode("json", None, app.conf.task_message_format)
    with running(app, "threads"):
        app.broker.publish([Outgoing(queue, body)])  # no not_before: the broker hands it out at once
        result = app.AsyncResult(message.id)
        result.get(timeout=10)
    assert RUNS["early"] >= eta.timestamp() - 0.05
