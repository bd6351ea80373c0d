"""The Broker contract (S1.2, S5.3): every broker passes the same suite."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from conveyor.brokers import Broker, Outgoing, broker_from_url
from tests.conftest import BROKERS, store_url


@pytest.fixture(params=BROKERS)
def broker(request: pytest.FixtureRequest, tmp_path) -> Iterator[Broker]:  # type: ignore[no-untyped-def]
    url, options = store_url(request.param, tmp_path)
    instance = broker_from_url(url, {"lease_timeout": 1.0, "polling_interval": 0.2, **options})
    yield instance
    instance.close()


def bodies(deliveries) -> list[bytes]:  # type: ignore[no-untyped-def]
    return [d.body for d in deliveries]


def test_publish_then_fetch_is_fifo(broker: Broker) -> None:
    broker.publish([Outgoing("q", f"m{i}".encode()) for i in range(5)])
    assert bodies(broker.fetch(["q"], 10, 0)) == [b"m0", b"m1", b"m2", b"m3", b"m4"]
    assert broker.fetch(["q"], 10, 0) == []


def test_fetch_respects_limit_and_queue(broker: Broker) -> None:
    broker.publish([Outgoing("a", b"a1"), Outgoing("b", b"b1"), Outgoing("a", b"a2")])
    assert bodies(broker.fetch(["a"], 1, 0)) == [b"a1"]
    assert bodies(broker.fetch(["b"], 5, 0)) == [b"b1"]
    assert bodies(broker.fetch(["a", "b"], 5, 0)) == [b"a2"]


def test_priority_zero_is_highest_and_fifo_within_priority(broker: Broker) -> None:
    """S5.3: priorities 0-255, 0 the highest, exact order (no buckets)."""
    broker.publish([Outgoing("q", b"p9-1", 9), Outgoing("q", b"p255", 255), Outgoing("q", b"p9-2", 9)])
    broker.publish([Outgoing("q", b"p0", 0), Outgoing("q", b"p1", 1), Outgoing("q", b"p8", 8)])
    assert bodies(broker.fetch(["q"], 10, 0)) == [b"p0", b"p1", b"p8", b"p9-1", b"p9-2", b"p255"]


def test_priority_across_queues(broker: Broker) -> None:
    if not broker.exact_priority_across_queues:
        pytest.skip(f"{type(broker).__name__} orders by priority within each queue only")
    broker.publish([Outgoing("low", b"low", 9), Outgoing("high", b"high", 0)])
    assert bodies(broker.fetch(["low", "high"], 1, 0)) == [b"high"]


def test_priority_is_validated(broker: Broker) -> None:
    with pytest.raises(ValueError, match="0 \\(highest\\)"):
        broker.publish_one("q", b"x", priority=256)


def test_delayed_message_is_held_by_the_broker_until_due(broker: Broker) -> None:
    """S2.3: countdown/eta wait in the broker, not in a worker."""
    broker.publish([Outgoing("q", b"later", not_before=time.time() + 0.6), Outgoing("q", b"now")])
    assert bodies(broker.fetch(["q"], 10, 0)) == [b"now"]
    assert broker.queue_sizes(["q"]) == {"q": 2 if broker.sizes_count_delayed else 1}
    started = time.monotonic()
    assert bodies(broker.fetch(["q"], 10, 5)) == [b"later"]
    assert 0.3 < time.monotonic() - started < 3


def test_ack_removes_for_good(broker: Broker) -> None:
    broker.publish_one("q", b"x")
    [delivery] = broker.fetch(["q"], 1, 0)
    broker.ack([delivery])
    assert broker.queue_sizes(["q"]) == {"q": 0}
    time.sleep(1.2)
    assert broker.fetch(["q"], 1, 0) == []


def test_large_batches_fetch_and_ack_whole(broker: Broker) -> None:
    """A fetch and an ack of 9,000 at once (Redis makes its variadic calls in chunks)."""
    broker.publish([Outgoing("q", f"m{i}".encode()) for i in range(9000)])
    deliveries = broker.fetch(["q"], 9000, 0)
    assert bodies(deliveries) == [f"m{i}".encode() for i in range(9000)]
    assert {d.attempts for d in deliveries} == {1}
    broker.ack(deliveries[:1] + deliveries)  # a repeated ack is harmless
    assert broker.queue_sizes(["q"]) == {"q": 0}


def lapse(broker: Broker) -> Broker:
    """Make the broker's current deliveries lapse, as they do when their holder dies: by time on a
    leasing broker; on one that ties them to the connection, by closing it. The same broker object
    fetches next, through a new connection."""
    if not broker.leases_lapse:
        broker.close()
        return broker_from_url(broker.url, broker.options)
    return broker


def test_lapsed_lease_redelivers(broker: Broker) -> None:
    """At-least-once: a delivery whose holder stops renewing (or dies) comes back."""
    broker.publish_one("q", b"x")
    [first] = broker.fetch(["q"], 1, 0)
    assert first.attempts == 1 and not first.redelivered
    assert broker.fetch(["q"], 1, 0) == []
    broker = lapse(broker)
    [again] = broker.fetch(["q"], 1, 3)
    broker.close()
    assert again.body == b"x" and again.attempts == 2 and again.redelivered


def test_renewed_lease_is_kept(broker: Broker) -> None:
    """A live holder keeps its delivery however long it runs (S3.1: nothing is run twice)."""
    broker.publish_one("q", b"x")
    [delivery] = broker.fetch(["q"], 1, 0)
    for _ in range(4):
        time.sleep(0.4)
        assert broker.renew([delivery]) == []
    assert broker.fetch(["q"], 1, 0) == []


def test_stale_holder_cannot_ack_or_renew_a_reclaimed_delivery(broker: Broker) -> None:
    """Fencing: the old lease token is worthless once another consumer holds the message."""
    broker.publish_one("q", b"x")
    [stale] = broker.fetch(["q"], 1, 0)
    holder = lapse(broker)
    [current] = holder.fetch(["q"], 1, 3)
    assert broker.renew([stale]) == [stale]
    broker.ack([stale])
    if not holder.leases_lapse:  # the new holder's connection holds it: a second one finds it taken
        other = broker_from_url(broker.url, broker.options)
        assert other.fetch(["q"], 1, 0.5) == []
        other.close()
    assert holder.queue_sizes(["q"]) == {"q": 1}
    holder.ack([current])
    assert holder.queue_sizes(["q"]) == {"q": 0}
    holder.close()


def test_requeue_makes_deliverable_at_once(broker: Broker) -> None:
    broker.publish_one("q", b"x")
    [delivery] = broker.fetch(["q"], 1, 0)
    broker.requeue([delivery])
    [again] = broker.fetch(["q"], 1, 0)
    assert again.body == b"x"


def test_dead_letter_keeps_the_reason(broker: Broker) -> None:
    broker.publish_one("q", b"garbage")
    [delivery] = broker.fetch(["q"], 1, 0)
    broker.dead_letter(delivery, "undecodable message: not JSON")
    assert broker.queue_sizes(["q"]) == {"q": 0}
    [letter] = broker.dead_letters()
    assert (letter.queue, letter.body, letter.reason) == ("q", b"garbage", "undecodable message: not JSON")


def test_dead_letters_go_back_to_their_queues_oldest_first(broker: Broker) -> None:
    broker.publish([Outgoing("a", b"first"), Outgoing("b", b"second"), Outgoing("a", b"third")])
    for queue in ("a", "b", "a"):
        [delivery] = broker.fetch([queue], 1, 0)
        broker.dead_letter(delivery, "the code had a bug")
    assert broker.requeue_dead_letters(2) == 2
    assert [letter.body for letter in broker.dead_letters()] == [b"third"]
    requeued = broker.fetch(["a", "b"], 10, 0)
    assert sorted(d.body for d in requeued) == [b"first", b"second"]
    assert {d.attempts for d in requeued} == {1}
    assert broker.requeue_dead_letters(10) == 1 and broker.dead_letters() == []
    assert bodies(broker.fetch(["a"], 10, 0)) == [b"third"]


def test_events_keep_the_latest_in_order(broker: Broker) -> None:
    from conveyor.brokers.base import EVENTS_KEPT

    broker.add_events([b"e0", b"e1"])
    broker.add_events([f"e{i}".encode() for i in range(2, EVENTS_KEPT + 5)])
    assert broker.recent_events(3) == [f"e{i}".encode() for i in range(EVENTS_KEPT + 2, EVENTS_KEPT + 5)]
    kept = broker.recent_events(EVENTS_KEPT + 100)
    assert len(kept) == EVENTS_KEPT and kept[0] == b"e5"


def test_purge_deletes_waiting_messages(broker: Broker) -> None:
    broker.publish([Outgoing("a", b"1"), Outgoing("a", b"2"), Outgoing("b", b"3")])
    assert broker.purge(["a"]) == 2
    assert broker.queue_sizes(["a", "b"]) == {"a": 0, "b": 1}


def test_blocked_fetch_wakes_when_a_message_is_published(broker: Broker) -> None:
    """An idle consumer is woken by a publish, not by its polling interval."""
    broker.options["polling_interval"] = 30
    if hasattr(broker, "polling_interval"):
        broker.polling_interval = 30  # type: ignore[attr-defined]
    result: list[float] = []

    def consume() -> None:
        deliveries = broker.fetch(["q"], 1, 20)
        result.append(time.monotonic() if deliveries else 0.0)

    thread = threading.Thread(target=consume)
    thread.start()
    time.sleep(0.3)
    published = time.monotonic()
    broker.publish_one("q", b"wake")
    thread.join(10)
    assert result and result[0] > 0, "fetch returned nothing"
    assert result[0] - published < 5, "the consumer slept through the publish"


def test_workers_registry(broker: Broker) -> None:
    broker.register_worker("w1", b"{}", ttl=60)
    broker.register_worker("w2", b"{}", ttl=-1)
    assert set(broker.workers()) == {"w1"}
    broker.unregister_worker("w1")
    assert broker.workers() == {}


def test_kv_swap_is_compare_and_set(broker: Broker) -> None:
    """The primitive beat relies on: of many swaps from one value, exactly one wins."""
    assert broker.kv_swap("ns", "k", None, b"1")
    assert not broker.kv_swap("ns", "k", None, b"2")
    assert not broker.kv_swap("ns", "k", b"0", b"2")
    assert broker.kv_swap("ns", "k", b"1", b"2")
    assert broker.kv_items("ns") == {"k": b"2"}
    assert broker.kv_get("ns", "k") == b"2" and broker.kv_get("ns", "other") is None
    assert broker.kv_get("other-ns", "k") is None
    assert broker.kv_swap("ns", "k", b"2", None)
    assert broker.kv_items("ns") == {} and broker.kv_get("ns", "k") is None
    broker.kv_put("ns", "k", b"3")  # whatever it holds
    broker.kv_put("ns", "k", b"4")
    assert broker.kv_get("ns", "k") == b"4"
    broker.kv_put("ns", "k", None)
    assert broker.kv_items("ns") == {}


def test_kv_swap_races_have_one_winner(broker: Broker) -> None:
    broker.kv_swap("race", "tick", None, b"0")
    wins: list[bool] = []

    def contend() -> None:
        wins.append(broker.kv_swap("race", "tick", b"0", b"1"))

    threads = [threading.Thread(target=contend) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wins.count(True) == 1


def test_revocations_are_remembered_until_they_expire(broker: Broker) -> None:
    broker.revoke(["a", "b"], b'{"terminate": false}', time.time() + 60)
    broker.revoke(["c"], b"{}", time.time() + 0.3)
    assert broker.revoked(["a", "c", "z"]) == {"a": b'{"terminate": false}', "c": b"{}"}
    time.sleep(0.5)
    assert set(broker.revoked(["a", "b", "c"])) == {"a", "b"}


def test_a_delivery_marked_not_revoked_was_fetched_with_no_revocation_live(broker: Broker) -> None:
    """`Delivery.not_revoked` lets a worker skip revoked(): it must never be set while one is live."""
    broker.publish([Outgoing("q", b"1")])
    broker.revoke(["some-task"], b"{}", time.time() + 60)
    [delivery] = broker.fetch(["q"], 1, 1.0)
    assert not delivery.not_revoked
    broker.ack([delivery])


def test_token_bucket_spaces_grants_evenly(broker: Broker) -> None:
    assert broker.take_token("k", 5) == 0
    wait = broker.take_token("k", 5)
    assert 0.1 < wait <= 0.2
    time.sleep(wait)
    assert broker.take_token("k", 5) == 0


def test_requeue_with_delay_and_uncounted_attempt(broker: Broker) -> None:
    broker.publish_one("q", b"x")
    [delivery] = broker.fetch(["q"], 1, 0)
    broker.requeue([delivery], delay=0.4)
    assert broker.fetch(["q"], 1, 0) == []
    [again] = broker.fetch(["q"], 1, 3)
    assert again.attempts == 1  # a give-back is not a failed delivery
    broker.requeue([again], redelivery=True)
    [third] = broker.fetch(["q"], 1, 0)
    assert third.attempts == 2
