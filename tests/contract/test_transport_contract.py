"""The transport contract: every broker's queues pass the same suite."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from conveyor.brokers import Broker, Outgoing, Transport, open_broker
from tests.conftest import BROKERS, store_url


@pytest.fixture(params=BROKERS)
def opened(request: pytest.FixtureRequest, tmp_path) -> Iterator[Broker]:  # type: ignore[no-untyped-def]
    url, options = store_url(request.param, tmp_path)
    broker = open_broker(url, {"lease_timeout": 1.0, "polling_interval": 0.2, **options})
    yield broker
    broker.close()


@pytest.fixture
def transport(opened: Broker) -> Transport:
    return opened.transport


def bodies(deliveries) -> list[bytes]:  # type: ignore[no-untyped-def]
    return [d.body for d in deliveries]


def test_publish_then_fetch_is_fifo(transport: Transport) -> None:
    transport.publish([Outgoing("q", f"m{i}".encode()) for i in range(5)])
    assert bodies(transport.fetch(["q"], 10, 0)) == [b"m0", b"m1", b"m2", b"m3", b"m4"]
    assert transport.fetch(["q"], 10, 0) == []


def test_fetch_respects_limit_and_queue(transport: Transport) -> None:
    transport.publish([Outgoing("a", b"a1"), Outgoing("b", b"b1"), Outgoing("a", b"a2")])
    assert bodies(transport.fetch(["a"], 1, 0)) == [b"a1"]
    assert bodies(transport.fetch(["b"], 5, 0)) == [b"b1"]
    assert bodies(transport.fetch(["a", "b"], 5, 0)) == [b"a2"]


def test_priority_zero_is_highest_and_fifo_within_priority(transport: Transport) -> None:
    """S5.3: priorities 0-255, 0 the highest, exact order (no buckets)."""
    transport.publish([Outgoing("q", b"p9-1", 9), Outgoing("q", b"p255", 255), Outgoing("q", b"p9-2", 9)])
    transport.publish([Outgoing("q", b"p0", 0), Outgoing("q", b"p1", 1), Outgoing("q", b"p8", 8)])
    assert bodies(transport.fetch(["q"], 10, 0)) == [b"p0", b"p1", b"p8", b"p9-1", b"p9-2", b"p255"]


def test_priority_across_queues(transport: Transport) -> None:
    if not transport.exact_priority_across_queues:
        pytest.skip(f"{type(transport).__name__} orders by priority within each queue only")
    transport.publish([Outgoing("low", b"low", 9), Outgoing("high", b"high", 0)])
    assert bodies(transport.fetch(["low", "high"], 1, 0)) == [b"high"]


def test_delayed_message_is_held_by_the_broker_until_due(transport: Transport) -> None:
    """S2.3: countdown/eta wait in the transport, not in a worker."""
    due, published = time.time() + 0.6, time.monotonic()  # timed from before the publish, however long it takes
    transport.publish([Outgoing("q", b"later", not_before=due), Outgoing("q", b"now")])
    assert bodies(transport.fetch(["q"], 10, 0)) == [b"now"]
    assert transport.queue_sizes(["q"]) == {"q": 2 if transport.sizes_count_delayed else 1}
    assert bodies(transport.fetch(["q"], 10, 5)) == [b"later"]
    assert 0.55 < time.monotonic() - published < 3


def test_ack_removes_for_good(transport: Transport) -> None:
    transport.publish([Outgoing("q", b"x")])
    [delivery] = transport.fetch(["q"], 1, 0)
    transport.ack([delivery])
    assert transport.queue_sizes(["q"]) == {"q": 0}
    time.sleep(1.2)
    assert transport.fetch(["q"], 1, 0) == []


def test_large_batches_fetch_and_ack_whole(transport: Transport) -> None:
    """A fetch and an ack of 9,000 at once (Redis makes its variadic calls in chunks)."""
    transport.publish([Outgoing("q", f"m{i}".encode()) for i in range(9000)])
    deliveries = transport.fetch(["q"], 9000, 0)
    assert bodies(deliveries) == [f"m{i}".encode() for i in range(9000)]
    assert {d.attempts for d in deliveries} == {1}
    transport.ack(deliveries[:1] + deliveries)  # a repeated ack is harmless
    assert transport.queue_sizes(["q"]) == {"q": 0}


def lapse(transport: Transport) -> Transport:
    """Make the transport's current deliveries lapse, as they do when their holder dies: by time on a
    leasing transport; on one that ties them to the connection, by closing it. The same transport object
    fetches next, through a new connection."""
    if not transport.leases_lapse:
        transport.close()
        return open_broker(transport.url, transport.options).transport
    return transport


def test_lapsed_lease_redelivers(transport: Transport) -> None:
    """At-least-once: a delivery whose holder stops renewing (or dies) comes back."""
    transport.publish([Outgoing("q", b"x")])
    [first] = transport.fetch(["q"], 1, 0)
    assert first.attempts == 1 and not first.redelivered
    assert transport.fetch(["q"], 1, 0) == []
    transport = lapse(transport)
    [again] = transport.fetch(["q"], 1, 3)
    transport.close()
    assert again.body == b"x" and again.attempts == 2 and again.redelivered


def test_renewed_lease_is_kept(transport: Transport) -> None:
    """A live holder keeps its delivery however long it runs (S3.1: nothing is run twice)."""
    transport.publish([Outgoing("q", b"x")])
    [delivery] = transport.fetch(["q"], 1, 0)
    for _ in range(4):
        time.sleep(0.4)
        assert transport.renew([delivery]) == []
    assert transport.fetch(["q"], 1, 0) == []


def test_stale_holder_cannot_ack_or_renew_a_reclaimed_delivery(transport: Transport) -> None:
    """Fencing: the old lease token is worthless once another consumer holds the message."""
    transport.publish([Outgoing("q", b"x")])
    [stale] = transport.fetch(["q"], 1, 0)
    holder = lapse(transport)
    [current] = holder.fetch(["q"], 1, 3)
    assert transport.renew([stale]) == [stale]
    transport.ack([stale])
    if not holder.leases_lapse:  # the new holder's connection holds it: a second one finds it taken
        other = open_broker(transport.url, transport.options).transport
        assert other.fetch(["q"], 1, 0.5) == []
        other.close()
    assert holder.queue_sizes(["q"]) == {"q": 1}
    holder.ack([current])
    assert holder.queue_sizes(["q"]) == {"q": 0}
    holder.close()


def test_requeue_makes_deliverable_at_once(transport: Transport) -> None:
    transport.publish([Outgoing("q", b"x")])
    [delivery] = transport.fetch(["q"], 1, 0)
    transport.requeue([delivery])
    [again] = transport.fetch(["q"], 1, 0)
    assert again.body == b"x"


def test_dead_letter_keeps_the_reason(transport: Transport) -> None:
    transport.publish([Outgoing("q", b"garbage")])
    [delivery] = transport.fetch(["q"], 1, 0)
    transport.dead_letter(delivery, "undecodable message: not JSON")
    assert transport.queue_sizes(["q"]) == {"q": 0}
    [letter] = transport.dead_letters()
    assert (letter.queue, letter.body, letter.reason) == ("q", b"garbage", "undecodable message: not JSON")


def test_dead_letters_go_back_to_their_queues_oldest_first(transport: Transport) -> None:
    transport.publish([Outgoing("a", b"first"), Outgoing("b", b"second"), Outgoing("a", b"third")])
    for queue in ("a", "b", "a"):
        [delivery] = transport.fetch([queue], 1, 0)
        transport.dead_letter(delivery, "the code had a bug")
    assert transport.requeue_dead_letters(2) == 2
    assert [letter.body for letter in transport.dead_letters()] == [b"third"]
    requeued = transport.fetch(["a", "b"], 10, 0)
    assert sorted(d.body for d in requeued) == [b"first", b"second"]
    assert {d.attempts for d in requeued} == {1}
    assert transport.requeue_dead_letters(10) == 1 and transport.dead_letters() == []
    assert bodies(transport.fetch(["a"], 10, 0)) == [b"third"]


def test_purge_deletes_waiting_messages(transport: Transport) -> None:
    transport.publish([Outgoing("a", b"1"), Outgoing("a", b"2"), Outgoing("b", b"3")])
    assert transport.purge(["a"]) == 2
    assert transport.queue_sizes(["a", "b"]) == {"a": 0, "b": 1}


def test_blocked_fetch_wakes_when_a_message_is_published(transport: Transport) -> None:
    """An idle consumer is woken by a publish, not by its polling interval."""
    transport.options["polling_interval"] = 30
    if hasattr(transport, "polling_interval"):
        transport.polling_interval = 30  # type: ignore[attr-defined]
    result: list[float] = []

    def consume() -> None:
        deliveries = transport.fetch(["q"], 1, 20)
        result.append(time.monotonic() if deliveries else 0.0)

    thread = threading.Thread(target=consume)
    thread.start()
    time.sleep(0.3)
    published = time.monotonic()
    transport.publish([Outgoing("q", b"wake")])
    thread.join(10)
    assert result and result[0] > 0, "fetch returned nothing"
    assert result[0] - published < 5, "the consumer slept through the publish"


def test_a_delivery_marked_not_revoked_was_fetched_with_no_revocation_live(opened: Broker) -> None:
    """`Delivery.not_revoked` lets a worker skip revoked(): it must never be set while one is live."""
    transport = opened.transport
    transport.publish([Outgoing("q", b"1")])
    opened.state.revoke(["some-task"], b"{}", time.time() + 60)
    [delivery] = transport.fetch(["q"], 1, 1.0)
    assert not delivery.not_revoked
    transport.ack([delivery])


def test_requeue_with_delay_and_uncounted_attempt(transport: Transport) -> None:
    transport.publish([Outgoing("q", b"x")])
    [delivery] = transport.fetch(["q"], 1, 0)
    transport.requeue([delivery], delay=0.4)
    assert transport.fetch(["q"], 1, 0) == []
    [again] = transport.fetch(["q"], 1, 3)
    assert again.attempts == 1  # a give-back is not a failed delivery
    transport.requeue([again], redelivery=True)
    [third] = transport.fetch(["q"], 1, 0)
    assert third.attempts == 2


def test_the_oldest_ready_messages_age_where_the_transport_can_tell(transport: Transport) -> None:
    """SQLite records when each message came; Redis's counter of ids, read at each call, dates
    them to within the calls' interval; RabbitMQ tells through its management plugin, when that
    runs (tests/integration/test_rabbitmq.py); memory tells nothing (the dashboard shows —)."""
    transport.oldest_ages(["aged"])  # Redis: the first look at the counter
    transport.publish([Outgoing("aged", b"first"), Outgoing("aged", b"second")])
    transport.oldest_ages(["aged", "empty"])
    time.sleep(0.3)
    ages = transport.oldest_ages(["aged", "empty"])
    assert "empty" not in ages
    if type(transport).__name__ in ("SQLiteTransport", "RedisTransport"):
        assert 0.25 <= ages["aged"] < 5
        transport.fetch(["aged"], 2, 1.0)
        assert "aged" not in transport.oldest_ages(["aged"])  # leased: none waits
    elif type(transport).__name__ == "MemoryTransport":
        assert ages == {}
