"""RabbitMQ nodes of the tests' own: a restart under a running worker (it reconnects, and no
task is lost), and the management plugin's API telling how long a queue's oldest message waited.

Each test starts a RabbitMQ node of its own (its own name, ports and data directory) and stops
only that one.
"""

from __future__ import annotations

import os
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from conveyor import Celery, states
from conveyor.brokers import Outgoing, open_broker
from conveyor.brokers.amqp_management import TIMEOUT_SECONDS, ManagementAPI, default_url, vhost_of
from conveyor.dashboard import create_app
from tests.processes import E2E, RabbitMQServer, flow_through_restart

# Booting a node takes both cores for seconds: kept off the second-timed beat tests' worker.
pytestmark = pytest.mark.xdist_group("clock")


def started_node(directory: Path, management: bool = False) -> RabbitMQServer:
    """A node of the test's own, started (skipped, or failed under CONVEYOR_REQUIRE_SERVICES=1,
    where RabbitMQ is not installed)."""
    if not Path(RabbitMQServer.BINARY).exists():
        reason = "rabbitmq-server is not installed"
        if os.environ.get("CONVEYOR_REQUIRE_SERVICES") == "1":
            pytest.fail(f"{reason} (CONVEYOR_REQUIRE_SERVICES=1)")
        pytest.skip(reason)
    server = RabbitMQServer(directory, management=management)
    server.start()
    return server


@pytest.fixture
def rabbitmq(tmp_path: Path):  # type: ignore[no-untyped-def]
    server = started_node(tmp_path / "rabbitmq")
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


@pytest.fixture
def rabbitmq_with_management(tmp_path: Path):  # type: ignore[no-untyped-def]
    server = started_node(tmp_path / "rabbitmq", management=True)
    deadline = time.monotonic() + 60
    while not _answers(server):  # the plugin starts after the AMQP listener
        assert time.monotonic() < deadline, "the management API did not start"
        time.sleep(0.5)
    yield server
    server.stop()


def _answers(server: RabbitMQServer) -> bool:
    """Whether the management API answers (unauthenticated: 401 is an answer)."""
    try:
        with urllib.request.urlopen(server.management_url.replace("guest:guest@", "") + "overview", timeout=1):
            return True
    except urllib.error.HTTPError:  # 401: it answers
        return True
    except OSError:
        return False


def test_the_age_of_rabbitmqs_oldest_ready_message_comes_from_the_management_api(
    rabbitmq_with_management: RabbitMQServer, tmp_path: Path
) -> None:
    server = rabbitmq_with_management
    options = {"management_url": server.management_url, "state_url": f"sqlite:///{tmp_path / 'state.db'}"}
    broker = open_broker(server.url, options)
    transport = broker.transport
    try:
        transport.publish([Outgoing("aged", b"first"), Outgoing("aged", b"second")])
        transport.publish([Outgoing("later", b"delayed", not_before=time.time() + 60)])
        deadline = time.monotonic() + 30
        while "aged" not in (ages := transport.oldest_ages(["aged", "later", "empty"])):
            assert time.monotonic() < deadline, "no age for the queue"
            time.sleep(0.3)
        assert 0 <= ages["aged"] < 30 and set(ages) == {"aged"}  # a delayed message is not ready yet
        time.sleep(2.1)
        assert transport.oldest_ages(["aged"])["aged"] >= 2  # it keeps ageing while it waits
        # The dashboard's broker page (what `conveyor flower --broker-api` serves) shows it.
        app = Celery("aged", broker=server.url, result_backend=f"sqlite:///{tmp_path / 'results.db'}",
                     broker_transport_options=options, task_default_queue="aged")  # fmt: skip
        try:
            page = TestClient(create_app(app)).get("/api/dashboard/broker").json()
            [row] = [q for q in page["queues"] if q["name"] == "aged"]
            assert row["messages"] == 2 and row["oldest_age"] >= 2
        finally:
            app.close()
        taken = transport.fetch(["aged"], 2, 5)
        assert len(taken) == 2
        deadline = time.monotonic() + 30
        while "aged" in transport.oldest_ages(["aged"]):  # leased: none waits
            assert time.monotonic() < deadline, "a leased message still ages"
            time.sleep(0.3)
    finally:
        broker.close()


def test_without_a_management_api_no_age_is_shown_and_it_is_not_asked_again_at_once() -> None:
    # A listener that never answers: the first look waits out its timeout, the next asks nobody.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        api = ManagementAPI(f"http://guest:guest@127.0.0.1:{silent.getsockname()[1]}/api/", "/")
        started = time.monotonic()
        assert api.head_ages(["q"]) == {}
        assert time.monotonic() - started >= TIMEOUT_SECONDS * 0.9
        started = time.monotonic()
        assert api.head_ages(["q"]) == {}
        assert time.monotonic() - started < 0.5


def test_the_management_api_is_found_beside_the_broker_by_default() -> None:
    assert default_url("amqp://guest:guest@127.0.0.1:5672//") == "http://guest:guest@127.0.0.1:15672/api/"
    assert default_url("amqps://u:p%40ss@mq.internal/prod") == "https://u:p%40ss@mq.internal:15671/api/"
    assert default_url("amqp://") == "http://guest:guest@localhost:15672/api/"
    assert [vhost_of(u) for u in ("amqp://h//", "amqp://h", "amqp://h/prod", "amqp://h/%2Fa")] == [
        "/",
        "/",
        "prod",
        "/a",
    ]
    api = ManagementAPI("http://u:p%40ss@mq:15672/api/", "/")
    assert api.url == "http://mq:15672/api/queues/%2F"
