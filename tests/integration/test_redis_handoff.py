"""A message published to an idle consumer is handed to it directly.

An idle consumer of one queue registers as a waiter in the same script call
that found nothing ready and blocks on its own inbox; a publish leases the
message to it there, so it runs without a claim round trip. These tests show
that the hand-off claims nothing, keeps fencing, never strands a message with a
consumer that stopped waiting or died, and that what cannot be handed over
(delayed messages, requeues) still wakes the waiter.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from conveyor.brokers.base import Delivery, Outgoing
from conveyor.brokers.redis import RedisTransport
from tests.contract.test_semantics import wait_for
from tests.processes import RedisServer

WAITERS = "conveyor:{q}:waiters"


@pytest.fixture
def broker(server: RedisServer) -> Iterator[RedisTransport]:
    broker = RedisTransport(server.url, {"polling_interval": 30, "lease_timeout": 1.5})
    yield broker
    broker.close()


class Consumer(threading.Thread):
    """One blocked fetch on a thread of its own."""

    def __init__(self, broker: RedisTransport, timeout: float = 20.0) -> None:
        super().__init__(daemon=True)
        self.broker, self.timeout = broker, timeout
        self.got: list[Delivery] = []
        self.returned_at = 0.0

    def run(self) -> None:
        self.got = self.broker.fetch(["q"], 4, self.timeout)
        self.returned_at = time.monotonic()


def claims(client: redis.Redis) -> int:
    """How often any script claimed from a ready list (FETCH pops with LPOP)."""
    return int(client.info("commandstats").get("cmdstat_lpop", {}).get("calls", 0))


def test_an_idle_consumer_is_handed_the_message_without_claiming(broker: RedisTransport, server: RedisServer) -> None:
    client = redis.Redis.from_url(server.url)
    consumer = Consumer(broker)
    consumer.start()
    wait_for(lambda: client.zcard(WAITERS) == 1)
    claimed = claims(client)
    broker.publish([Outgoing("q", b"handed")])
    consumer.join(10)
    assert [d.body for d in consumer.got] == [b"handed"]
    assert claims(client) == claimed, "the consumer claimed instead of taking what it was handed"
    [delivery] = consumer.got
    assert delivery.attempts == 1 and delivery.not_revoked
    assert client.zcard(WAITERS) == 0 and client.exists("conveyor:{q}:priorities", "conveyor:{q}:ready:0") == 0
    # Leased to it like a claimed delivery: renewable, then acknowledged for good.
    assert broker.renew([delivery]) == []
    broker.ack([delivery])
    broker.confirm()
    assert broker.queue_sizes(["q"]) == {"q": 0}
    client.close()


def test_a_waiter_is_handed_the_batchs_best_priority(broker: RedisTransport, server: RedisServer) -> None:
    """A batch meeting one waiter: the waiter gets its priority-0 message, the rest stay in order."""
    consumer = Consumer(broker)
    consumer.start()
    wait_for(lambda: redis.Redis.from_url(server.url).zcard(WAITERS) == 1)
    broker.publish([Outgoing("q", b"nine", priority=9), Outgoing("q", b"zero", priority=0), Outgoing("q", b"five", 5)])
    consumer.join(10)
    assert [d.body for d in consumer.got] == [b"zero"]
    assert [d.body for d in broker.fetch(["q"], 4, 0)] == [b"five", b"nine"]


def test_a_handed_delivery_is_fenced_like_a_claimed_one(broker: RedisTransport, server: RedisServer) -> None:
    """A stale holder (its lease lapsed and the message went to another) cannot ack it."""
    consumer = Consumer(broker)
    consumer.start()
    wait_for(lambda: redis.Redis.from_url(server.url).zcard(WAITERS) == 1)
    broker.publish([Outgoing("q", b"m")])
    consumer.join(10)
    [stale] = consumer.got
    time.sleep(1.7)  # the lease (1.5 s) lapses unrenewed
    [again] = broker.fetch(["q"], 1, 0)
    assert again.attempts == 2
    broker.ack([stale])
    broker.confirm()
    assert broker.queue_sizes(["q"]) == {"q": 1}, "a stale holder's ack removed a reclaimed message"
    broker.ack([again])
    broker.confirm()
    assert broker.queue_sizes(["q"]) == {"q": 0}


def test_a_dead_waiters_registration_lapses(broker: RedisTransport, server: RedisServer) -> None:
    """A consumer killed while registered is handed nothing once its wait plus a second passed;
    one message handed to it before that comes back when its lease lapses."""
    token = uuid.uuid4().hex
    keys = broker._keys("q")[:4]
    broker.redis.scripts.run("fetch", keys, [int(time.time() * 1000), 1500, 4, token, f"dead:{token}:1500", 1200])
    broker.publish([Outgoing("q", b"to the dead one")])
    assert broker.fetch(["q"], 1, 0) == []
    time.sleep(1.7)  # its registration (1.2 s) has lapsed, and the lease (1.5 s) too
    broker.publish([Outgoing("q", b"after")])
    got = broker.fetch(["q"], 4, 0)
    assert sorted(d.body for d in got) == [b"after", b"to the dead one"]
    assert redis.Redis.from_url(server.url).zcard(WAITERS) == 0


def test_no_message_is_stranded_or_doubled_as_waits_begin_and_end(broker: RedisTransport) -> None:
    """Consumers whose short waits keep timing out while messages arrive at random moments:
    each message is delivered exactly once, at its first attempt (a hand-off racing the end of a
    wait is found by it, not left to come back when its lease lapses)."""
    total, received, attempts, lock = 600, [], [], threading.Lock()
    stop = threading.Event()

    def consume() -> None:
        while not stop.is_set():
            deliveries = broker.fetch(["q"], 2, random.choice([0.001, 0.005, 0.02]))
            with lock:
                received.extend(d.body for d in deliveries)
                attempts.extend(d.attempts for d in deliveries)
            if deliveries:
                broker.ack(deliveries)
        broker.confirm()

    consumers = [threading.Thread(target=consume) for _ in range(3)]
    for thread in consumers:
        thread.start()
    for i in range(total):
        broker.publish([Outgoing("q", str(i).encode())])
        if i % 7 == 0:
            time.sleep(random.random() * 0.004)
    broker.confirm()
    wait_for(lambda: len(received) >= total, timeout=30)
    stop.set()
    for thread in consumers:
        thread.join(10)
    assert sorted(received, key=int) == [str(i).encode() for i in range(total)]
    assert set(attempts) == {1}
    assert broker.queue_sizes(["q"]) == {"q": 0}


def test_a_delayed_publish_wakes_a_waiter_to_wait_for_its_due_time(broker: RedisTransport) -> None:
    consumer = Consumer(broker, timeout=15)
    consumer.start()
    time.sleep(0.3)
    published = time.monotonic()
    broker.publish([Outgoing("q", b"soon", not_before=time.time() + 0.3)])
    consumer.join(10)
    assert [d.body for d in consumer.got] == [b"soon"]
    assert consumer.returned_at - published < 2, "the waiter slept past the due time (until its polling interval)"


def test_a_requeue_wakes_a_waiter(broker: RedisTransport) -> None:
    broker.publish([Outgoing("q", b"m")])
    [held] = broker.fetch(["q"], 1, 0)
    consumer = Consumer(broker, timeout=15)
    consumer.start()
    time.sleep(0.3)
    requeued = time.monotonic()
    broker.requeue([held])
    consumer.join(10)
    assert [d.body for d in consumer.got] == [b"m"]
    assert consumer.returned_at - requeued < 0.8, "the waiter slept until the lease's end, not woken"


def test_a_fetch_that_ends_leaves_no_registration(broker: RedisTransport) -> None:
    """Woken by interrupt() (a stopping worker's) or timed out, a fetch ends its registration."""
    consumer = Consumer(broker, timeout=0.8)
    consumer.start()
    time.sleep(0.3)
    broker.interrupt()
    consumer.join(10)
    assert consumer.got == []
    assert redis.Redis.from_url(broker.url).zcard(WAITERS) == 0
