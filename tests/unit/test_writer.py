"""The worker's writer thread: results before acks, retried while the store is down, given up at shutdown."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

import pytest

from conveyor import states
from conveyor.backends.base import StateUpdate
from conveyor.backends.memory import MemoryBackend
from conveyor.brokers.base import Outgoing
from conveyor.brokers.memory import MemoryTransport
from conveyor.brokers.memory_state import MemoryStateStore
from conveyor.exceptions import BackendConnectionError, BrokerConnectionError
from conveyor.worker import writer
from conveyor.worker.writer import Writer


class FlakyBackend(MemoryBackend):
    """A memory backend whose first `failures` writes fail as an unreachable store would."""

    def __init__(self, failures: int, events: list[str]) -> None:
        super().__init__("memory://writer-test")
        self.failures = failures
        self.events = events

    def write(self, updates: Sequence[StateUpdate]) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise BackendConnectionError("store unreachable")
        self.events.append("write")
        super().write(updates)


class RecordingBroker(MemoryTransport):
    def __init__(self, events: list[str]) -> None:
        super().__init__("memory://writer-test")
        self.events = events
        self.threads: list[str] = []

    def ack(self, deliveries):  # type: ignore[no-untyped-def]
        self.events.append("ack")
        self.threads.append(threading.current_thread().name)
        super().ack(deliveries)


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writer, "MAX_BACKOFF", 0.01)


def write_once(failures: int, caplog: pytest.LogCaptureFixture) -> tuple[list[str], FlakyBackend, RecordingBroker]:
    """One result and one ack through a writer whose store fails `failures` times; closed after."""
    events: list[str] = []
    backend, broker = FlakyBackend(failures, events), RecordingBroker(events)
    broker.publish([Outgoing("q", b"m")])
    [delivery] = broker.fetch(["q"], 1, 0)
    w = Writer(backend, broker, MemoryStateStore(broker.store))
    w.start()
    with caplog.at_level(logging.WARNING, "conveyor.worker"):
        w.submit([backend.make_update("t1", states.SUCCESS, 3)], [delivery], inline=True)
        w.close(timeout=10)
    return events, backend, broker


def test_results_are_written_before_acks_and_retried_until_the_store_is_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The first attempt is made on the submitting thread, at once; the writer's thread retries the rest.
    events, backend, broker = write_once(3, caplog)
    assert events == ["write", "ack"]
    assert backend.get_meta("t1")["result"] == 3
    assert broker.queue_sizes(["q"]) == {"q": 0}
    messages = [r.getMessage() for r in caplog.records]
    assert sum("Could not store" in m for m in messages) == 1
    assert sum("stored again after 2 failed attempts" in m for m in messages) == 1


def test_shutdown_gives_up_on_an_unreachable_store_and_leaves_the_message_leased(
    caplog: pytest.LogCaptureFixture,
) -> None:
    events, _, broker = write_once(100, caplog)
    assert events == []  # never acknowledged without its result
    assert broker.queue_sizes(["q"]) == {"q": 1}
    assert any("Giving up" in r.getMessage() for r in caplog.records)


def test_an_idle_writer_lets_the_caller_write_and_a_busy_one_keeps_the_order() -> None:
    """An idle worker's batch is written on the thread handling it (no wake-up of another);
    while a batch waits for a retry, later ones queue behind it, in order, even those the
    caller would write itself; a busy caller hands its batch over."""
    events: list[str] = []
    backend, broker = FlakyBackend(0, events), RecordingBroker(events)
    broker.publish([Outgoing("q", b"m")] * 3)
    first, second, third = broker.fetch(["q"], 3, 0)
    w = Writer(backend, broker, MemoryStateStore(broker.store))
    w.start()
    w.submit([backend.make_update("t1", states.SUCCESS, 1)], [first], inline=True)
    assert events == ["write"]  # its ack waits until the caller has let go of what it holds
    w.send_inline_acks()
    assert events == ["write", "ack"] and broker.threads == [threading.current_thread().name]
    backend.failures = 1  # the next inline attempt fails: the writer's thread takes over
    w.submit([backend.make_update("t2", states.SUCCESS, 2)], [second], inline=True)
    w.submit([backend.make_update("t3", states.SUCCESS, 3)], [third], inline=True)
    w.close(timeout=10)
    assert broker.threads[1] == "conveyor-writer"  # t2 (and t3 with it, unless t2 was done by then)
    assert [backend.get_meta(t)["result"] for t in ("t1", "t2", "t3")] == [1, 2, 3]
    assert broker.queue_sizes(["q"]) == {"q": 0}

    broker.publish([Outgoing("q", b"m")])
    [fourth] = broker.fetch(["q"], 1, 0)
    w = Writer(backend, broker, MemoryStateStore(broker.store))
    w.start()
    w.submit([backend.make_update("t4", states.SUCCESS, 4)], [fourth])  # busy: not inline
    w.close(timeout=10)
    assert broker.threads[-1] == "conveyor-writer"
    assert backend.get_meta("t4")["result"] == 4


class FailingAckBroker(RecordingBroker):
    """Its first ack is lost with its connection."""

    def __init__(self, events: list[str]) -> None:
        super().__init__(events)
        self.lose = 1

    def ack(self, deliveries):  # type: ignore[no-untyped-def]
        if self.lose:
            self.lose -= 1
            raise BrokerConnectionError("connection lost")
        super().ack(deliveries)


def test_an_inline_ack_that_fails_is_sent_again_by_the_writers_thread() -> None:
    events: list[str] = []
    backend, broker = FlakyBackend(0, events), FailingAckBroker(events)
    broker.publish([Outgoing("q", b"m")])
    [delivery] = broker.fetch(["q"], 1, 0)
    w = Writer(backend, broker, MemoryStateStore(broker.store))
    w.start()
    w.submit([backend.make_update("t1", states.SUCCESS, 1)], [delivery], inline=True)
    w.send_inline_acks()
    w.close(timeout=10)
    assert events == ["write", "ack"] and broker.threads == ["conveyor-writer"]
    assert broker.queue_sizes(["q"]) == {"q": 0}
