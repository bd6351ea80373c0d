"""The RabbitMQ broker's pure parts: URLs as Celery users write them, the delay ladder's keys,
priorities, and where its shared state lives (S1.2)."""

from __future__ import annotations

import pytest

from conveyor import Celery
from conveyor.brokers.amqp import (
    DEFAULT_STATE_URL,
    DELAY_LEVELS,
    AMQPTransport,
    connection_url,
    delay_ladder_key,
    with_state_defaults,
)


@pytest.mark.parametrize(
    ("celery_url", "expected"),
    [
        ("amqp://", "amqp://guest:guest@localhost//"),
        ("pyamqp://guest@localhost//", "amqp://guest:guest@localhost//"),
        ("amqp://user:secret@rabbit:5673/prod", "amqp://user:secret@rabbit:5673/prod"),
        ("amqps://user:pw@rabbit/vhost?cafile=/ca.pem", "amqps://user:pw@rabbit/vhost?cafile=/ca.pem"),
        ("librabbitmq://127.0.0.1", "amqp://guest:guest@127.0.0.1//"),
    ],
)
def test_celery_urls_are_understood(celery_url: str, expected: str) -> None:
    assert connection_url(celery_url) == expected


def test_the_ladder_key_spells_the_delay_in_binary_then_the_queue() -> None:
    key = delay_ladder_key(5, "q.x")
    words = key.split(".")
    assert len(words) == DELAY_LEVELS + 2 and words[-2:] == ["q", "x"]
    assert "".join(words[:DELAY_LEVELS]).lstrip("0") == "101"
    # Each rung k stops the message for 2**k ms exactly when its bit is 1.
    assert sum(2**level for level in range(DELAY_LEVELS) if words[DELAY_LEVELS - 1 - level] == "1") == 5


def test_priorities_map_onto_rabbitmq_highest_first() -> None:
    exact = AMQPTransport.__new__(AMQPTransport)
    exact.max_priority = 255
    assert [exact._amqp_priority(p) for p in (0, 1, 9, 255)] == [255, 254, 246, 0]
    folded = AMQPTransport.__new__(AMQPTransport)
    folded.max_priority = 10  # exact for Celery's usual 0-9, the rest folded into RabbitMQ's lowest
    assert [folded._amqp_priority(p) for p in range(12)] == [10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 0]
    assert folded._amqp_priority(255) == 0


def test_shared_state_defaults_to_the_result_backend_when_it_can_keep_it() -> None:
    on_redis = with_state_defaults({}, "redis://127.0.0.1:6379/3", {"global_keyprefix": "x:"})
    assert on_redis["state_url"] == "redis://127.0.0.1:6379/3"
    assert on_redis["state_transport_options"] == {"global_keyprefix": "x:"}
    assert with_state_defaults({}, "db+postgresql://h/db", None)["state_url"] == DEFAULT_STATE_URL
    assert with_state_defaults({}, None, None)["state_url"] == DEFAULT_STATE_URL
    assert with_state_defaults({"state_url": "redis://h/1"}, "sqlite:///r.db", None)["state_url"] == "redis://h/1"


def test_the_app_builds_the_amqp_broker_with_its_state_store(tmp_path) -> None:  # type: ignore[no-untyped-def]
    app = Celery("names", broker="amqp://guest:guest@127.0.0.1:1//", result_backend=f"sqlite:///{tmp_path}/r.db")
    broker = app.broker  # connects only on first use
    assert isinstance(broker, AMQPTransport) and broker.state_url == f"sqlite:///{tmp_path}/r.db"
    app.close()
