"""The state store contract: every store of shared state passes the same suite (RabbitMQ keeps
its shared state in the store its `state_url` names, one of these)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from conveyor.brokers import StateStore, open_broker
from conveyor.brokers.state import EVENTS_KEPT, EVENTS_TRIM_EVERY
from tests.conftest import STATE_STORES, store_url


@pytest.fixture(params=STATE_STORES)
def state(request: pytest.FixtureRequest, tmp_path) -> Iterator[StateStore]:  # type: ignore[no-untyped-def]
    url, options = store_url(request.param, tmp_path)
    broker = open_broker(url, options)
    yield broker.state
    broker.close()


def test_events_keep_the_latest_in_order_and_drop_the_oldest_every_few_writes(state: StateStore) -> None:
    state.add_events([f"e{i}".encode() for i in range(EVENTS_KEPT + 5)])  # a store's first write trims
    assert state.recent_events(3) == [f"e{i}".encode() for i in range(EVENTS_KEPT + 2, EVENTS_KEPT + 5)]
    kept = state.recent_events(EVENTS_KEPT + 100)
    assert len(kept) == EVENTS_KEPT and kept[0] == b"e5"
    later = [f"later{i}".encode() for i in range(EVENTS_TRIM_EVERY)]
    for event in later[:-1]:
        state.add_events([event])
    kept = state.recent_events(EVENTS_KEPT + 100)
    assert EVENTS_KEPT <= len(kept) < EVENTS_KEPT + EVENTS_TRIM_EVERY and kept[-3:] == later[-4:-1]
    state.add_events([later[-1]])  # the EVENTS_TRIM_EVERY-th write after the first
    kept = state.recent_events(EVENTS_KEPT + 100)
    assert len(kept) == EVENTS_KEPT and kept[-EVENTS_TRIM_EVERY:] == later


def test_workers_registry(state: StateStore) -> None:
    state.register_worker("w1", b"{}", ttl=60)
    state.register_worker("w2", b"{}", ttl=-1)
    assert set(state.workers()) == {"w1"}
    state.unregister_worker("w1")
    assert state.workers() == {}


def test_kv_swap_is_compare_and_set(state: StateStore) -> None:
    """The primitive beat relies on: of many swaps from one value, exactly one wins."""
    assert state.kv_swap("ns", "k", None, b"1")
    assert not state.kv_swap("ns", "k", None, b"2")
    assert not state.kv_swap("ns", "k", b"0", b"2")
    assert state.kv_swap("ns", "k", b"1", b"2")
    assert state.kv_items("ns") == {"k": b"2"}
    assert state.kv_get("ns", "k") == b"2" and state.kv_get("ns", "other") is None
    assert state.kv_get("other-ns", "k") is None
    assert state.kv_swap("ns", "k", b"2", None)
    assert state.kv_items("ns") == {} and state.kv_get("ns", "k") is None
    state.kv_put("ns", "k", b"3")  # whatever it holds
    state.kv_put("ns", "k", b"4")
    assert state.kv_get("ns", "k") == b"4"
    state.kv_put("ns", "k", None)
    assert state.kv_items("ns") == {}


def test_kv_swap_races_have_one_winner(state: StateStore) -> None:
    state.kv_swap("race", "tick", None, b"0")
    wins: list[bool] = []

    def contend() -> None:
        wins.append(state.kv_swap("race", "tick", b"0", b"1"))

    threads = [threading.Thread(target=contend) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wins.count(True) == 1


def test_revocations_are_remembered_until_they_expire(state: StateStore) -> None:
    state.revoke(["a", "b"], b'{"terminate": false}', time.time() + 60)
    state.revoke(["c"], b"{}", time.time() + 0.3)
    assert state.revoked(["a", "c", "z"]) == {"a": b'{"terminate": false}', "c": b"{}"}
    time.sleep(0.5)
    assert set(state.revoked(["a", "b", "c"])) == {"a", "b"}


def test_token_bucket_spaces_grants_evenly(state: StateStore) -> None:
    assert state.take_token("k", 5) == 0
    wait = state.take_token("k", 5)
    assert 0.1 < wait <= 0.2
    time.sleep(wait)
    assert state.take_token("k", 5) == 0
