"""Single publishes on RabbitMQ not waited for, and confirmed before anything acts on them.

A `delay()` to a queue the connection has declared sends its message and
returns; its publisher confirm is awaited by `Transport.confirm()` (which
`AsyncResult.get()` and a worker's task end call), by the thread's next call
of the broker, once SEND_WINDOW are owed, or when the thread ends. These
tests show that nothing is lost on the way (a connection lost with confirms
outstanding publishes them again) and that a negative confirm is raised. The
last one shows the consumer's side: RabbitMQ may push a worker's whole
prefetch window though each fetch asks for half.
"""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from conveyor import Celery
from conveyor.brokers.amqp import AMQPTransport
from conveyor.brokers.base import Delivery
from conveyor.exceptions import BrokerError
from conveyor.pipelining import SEND_WINDOW
from tests.conftest import store_url


@pytest.fixture
def app(tmp_path) -> Iterator[Celery]:  # type: ignore[no-untyped-def]
    url, options = store_url("amqp", tmp_path)
    app = Celery("amqp-publish", broker=url, result_backend=f"sqlite:///{tmp_path / 'results.db'}")
    app.conf.broker_transport_options = options

    @app.task(name="t.add")
    def add(x: int, y: int) -> int:
        return x + y

    yield app
    app.broker.purge(["celery", "capped"])
    app.close()


def unconfirmed(broker: AMQPTransport) -> int:
    return len(broker._confirms.window().unconfirmed)


def test_single_publishes_return_before_their_confirm_and_are_all_taken(app: Celery) -> None:
    broker = app.broker
    assert isinstance(broker, AMQPTransport)
    add = app.tasks["t.add"]
    add.delay(0, 0)  # the first to a queue waits: it declares the queue
    most = 0
    for i in range(1, 2000):
        add.delay(i, i)
        most = max(most, unconfirmed(broker))
    assert 0 < most <= SEND_WINDOW  # sent ahead of their confirms, never more than the window
    # The same thread's next call sees every message it published.
    assert broker.queue_sizes(["celery"]) == {"celery": 2000}
    assert unconfirmed(broker) == 0


def test_a_thread_that_ends_has_its_publishes_confirmed(app: Celery) -> None:
    add = app.tasks["t.add"]
    add.delay(0, 0)

    def produce() -> None:
        for i in range(300):
            add.delay(i, i)

    threads = [threading.Thread(target=produce) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert app.broker.queue_sizes(["celery"]) == {"celery": 901}


def _abort_connection(broker: AMQPTransport) -> None:
    """Drop the broker's TCP connection as a network failure would (no AMQP close)."""

    async def abort() -> None:
        for obj in gc.get_objects():
            if isinstance(obj, asyncio.Transport) and not obj.is_closing():
                peer = obj.get_extra_info("peername")
                if peer and peer[1] == 5672 and obj.get_extra_info("socket") is not None:
                    loop = getattr(obj, "_loop", None)
                    if loop is asyncio.get_running_loop():
                        obj.abort()

    asyncio.run_coroutine_threadsafe(abort(), broker._link.loop).result(5)


def test_a_connection_lost_with_confirms_outstanding_publishes_them_again(
    app: Celery, caplog: pytest.LogCaptureFixture
) -> None:
    broker = app.broker
    assert isinstance(broker, AMQPTransport)
    add = app.tasks["t.add"]
    add.delay(0, 0)
    sent = [add.delay(i, i).id for i in range(1, SEND_WINDOW // 2)]
    _abort_connection(broker)  # queued on the loop behind the publishes: their confirms are not back
    broker.confirm()  # what the abort left unconfirmed goes again, on a new connection
    assert any("again: the connection was lost" in r.getMessage() for r in caplog.records)
    count = broker.queue_sizes(["celery"])["celery"]
    assert len(sent) + 1 <= count <= len(sent) + 1 + SEND_WINDOW  # at least once, duplicates bounded


def test_a_negative_confirm_is_raised_by_confirm(app: Celery) -> None:
    if shutil.which("rabbitmqctl") is None:  # RabbitMQ's own tool, to set a policy
        if os.environ.get("CONVEYOR_REQUIRE_SERVICES") == "1":
            pytest.fail("rabbitmqctl is not installed (CONVEYOR_REQUIRE_SERVICES=1)")
        pytest.skip("rabbitmqctl is not installed")
    broker = app.broker
    assert isinstance(broker, AMQPTransport)
    name = broker._name("capped")
    policy = f"conveyor-test-{uuid.uuid4().hex[:8]}"
    # RabbitMQ refuses (basic.nack) what a full queue with overflow=reject-publish cannot hold.
    subprocess.run(
        ["rabbitmqctl", "-q", "set_policy", "--apply-to", "queues", policy, f"^{name}$",
         '{"max-length": 1, "overflow": "reject-publish"}'],
        check=True, timeout=60,
    )  # fmt: skip
    try:
        add = app.tasks["t.add"]
        add.apply_async((1, 1), queue="capped")  # declares the queue (and waits): it holds one now
        with pytest.raises(BrokerError) as refused:
            for _ in range(5):
                add.apply_async((2, 2), queue="capped")  # returns at once
                broker.confirm()
        assert "refused" in str(refused.value) or "did not accept" in str(refused.value)
    finally:
        subprocess.run(["rabbitmqctl", "-q", "clear_policy", policy], check=False, timeout=60)


def test_rabbitmq_pushes_the_whole_prefetch_window_while_a_fetch_asks_for_half(app: Celery) -> None:
    """A worker's fetcher asks for half its window at a time (the other half runs meanwhile):
    RabbitMQ must still be let push the whole window (qos), and no more."""
    broker = app.broker
    assert isinstance(broker, AMQPTransport)
    add = app.tasks["t.add"]
    add.delay(0, 0)
    for i in range(1, 20):
        add.delay(i, i)
    broker.confirm()  # all 20 queued before the consumer starts
    broker.qos(8)
    # A fetch returns what has been pushed so far (under load, maybe a single message): ask again.
    taken: list[Delivery] = []
    deadline = time.monotonic() + 5
    while len(taken) < 4 and time.monotonic() < deadline:
        taken += broker.fetch(["celery"], 4 - len(taken), 1)
    assert len(taken) == 4
    deadline = time.monotonic() + 5
    while len(broker._buffer) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)  # RabbitMQ would push more now if the window let it
    assert len(broker._buffer) == 4  # pushed, waiting for the next fetch: 8 held in all
    broker.requeue(taken + broker.fetch(["celery"], 4, 0))
