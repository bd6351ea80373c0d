"""Ready messages on Redis: a list of ids per priority, and the set of priorities that have one.

A message taken and given back (requeued, or its lease lapsed) goes to the head of its
priority's list; a delay that comes due goes to the tail, behind what was ready before it.
Equal priorities across queues are taken from the queues in turn.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from conveyor.brokers.base import Outgoing
from conveyor.brokers.redis import RedisTransport
from tests.processes import RedisServer


@pytest.fixture
def broker(server: RedisServer) -> Iterator[RedisTransport]:
    broker = RedisTransport(server.url, {"polling_interval": 0.2, "lease_timeout": 0.5})
    yield broker
    broker.close()


def bodies(deliveries) -> list[bytes]:  # type: ignore[no-untyped-def]
    return [d.body for d in deliveries]


def test_a_message_given_back_goes_before_those_published_after_it(broker: RedisTransport) -> None:
    broker.publish([Outgoing("q", b"first"), Outgoing("q", b"second")])
    [first] = broker.fetch(["q"], 1, 0)
    broker.publish([Outgoing("q", b"third")])
    broker.requeue([first])
    assert bodies(broker.fetch(["q"], 3, 0)) == [b"first", b"second", b"third"]


def test_a_lapsed_delivery_comes_back_before_newer_messages(broker: RedisTransport) -> None:
    broker.publish([Outgoing("q", b"taken", 3)])
    broker.fetch(["q"], 1, 0)
    broker.publish([Outgoing("q", b"newer", 3)])
    time.sleep(0.7)
    assert bodies(broker.fetch(["q"], 2, 0)) == [b"taken", b"newer"]


def test_a_delay_that_came_due_waits_behind_what_was_ready_before(broker: RedisTransport) -> None:
    broker.publish([Outgoing("q", b"delayed", 5, not_before=time.time() + 0.2)])
    time.sleep(0.4)
    broker.publish([Outgoing("q", b"ready", 5), Outgoing("q", b"urgent", 0)])
    assert bodies(broker.fetch(["q"], 3, 0)) == [b"urgent", b"ready", b"delayed"]


def test_equal_priorities_across_queues_are_taken_in_turn(broker: RedisTransport) -> None:
    broker.publish([Outgoing("a", b"a%d" % i, 5) for i in range(3)] + [Outgoing("b", b"b%d" % i, 5) for i in range(3)])
    broker.publish([Outgoing("b", b"b-urgent", 0), Outgoing("a", b"a-low", 9)])
    taken = bodies(broker.fetch(["a", "b"], 4, 0))
    assert taken[0] == b"b-urgent" and sorted(taken[1:]) == [b"a0", b"a1", b"b0"]


def test_a_drained_or_purged_queue_leaves_no_ready_keys(broker: RedisTransport, server: RedisServer) -> None:
    broker.publish([Outgoing("q", b"x", priority) for priority in (0, 7, 255)])
    broker.ack(broker.fetch(["q"], 10, 0))
    broker.publish([Outgoing("q", b"y", priority) for priority in (1, 2)])
    assert broker.purge(["q"]) == 2
    client = redis.Redis.from_url(server.url)
    try:
        assert client.keys("conveyor:{q}:ready*") == [] and client.exists("conveyor:{q}:priorities") == 0
    finally:
        client.close()


def test_the_next_message_of_a_large_batch_keeps_publish_order(broker: RedisTransport) -> None:
    large = b"L" * 2_000_000  # over the hand-off limit: queued, never sent over pub/sub
    broker.publish([Outgoing("q", b"small-1"), Outgoing("q", large), Outgoing("q", b"small-2")])
    assert [len(body) for body in bodies(broker.fetch(["q"], 3, 0))] == [7, len(large), 7]
