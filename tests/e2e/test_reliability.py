"""At-least-once delivery and shutdown with real worker processes,
on the embedded SQLite broker and on RabbitMQ (S1.2), whose deliveries are the connection's
rather than leased: the same outcomes, by the other route."""

from __future__ import annotations

import os
import re
import signal
import time
from typing import Any

import pytest

from conveyor import states
from conveyor.brokers import Outgoing
from tests.contract.test_semantics import wait_for
from tests.processes import E2E, alive, children_of, wait_for_state


@pytest.fixture(params=["sqlite", "amqp"])
def broker(request: pytest.FixtureRequest, e2e: E2E) -> str:
    return str(request.param)


def write_app(e2e: E2E, broker: str, **settings: Any) -> None:
    """The app module on this broker: SQLite (the test's file), or RabbitMQ."""
    if broker == "amqp":
        e2e.write_rabbitmq_app(**settings)
    else:
        e2e.write_app(**settings)


def test_sigkill_mid_task_with_acks_late_loses_nothing(e2e: E2E, broker: str) -> None:
    """A worker killed with SIGKILL mid-task: its delivery returns when the lease lapses (RabbitMQ:
    when its connection drops); another worker runs it; one SUCCESS."""
    write_app(e2e, broker, lease=2, task_acks_late=True)
    doomed = e2e.start_worker("-P", "prefork", "-c", "1", name="doomed")
    result = e2e.app.tasks["e2e.sleep"].delay(2)
    wait_for_state(result, states.STARTED)
    doomed.kill_group()
    rescuer = e2e.start_worker("-P", "prefork", "-c", "1", name="rescuer")
    assert isinstance(result.get(timeout=30), int)
    history = result.scoreboard["history"]
    assert [h["state"] for h in history] == [states.STARTED, states.STARTED, states.SUCCESS]
    assert [h["worker"] for h in history] == ["doomed@e2e", "rescuer@e2e", "rescuer@e2e"]
    rescuer.wait_for_log("succeeded in")


def test_long_task_on_a_live_worker_runs_once(e2e: E2E, broker: str) -> None:
    """A task running far longer than the lease keeps it renewed: never delivered twice."""
    write_app(e2e, broker, lease=1, task_acks_late=True)
    e2e.start_worker("-P", "threads", "-c", "1", name="a")
    e2e.start_worker("-P", "threads", "-c", "1", name="b")
    result = e2e.app.tasks["e2e.sleep"].delay(4)
    result.get(timeout=30)
    time.sleep(1.5)  # past another lease period: nothing may have been redelivered
    states_seen = [h["state"] for h in result.scoreboard["history"]]
    assert states_seen == [states.STARTED, states.SUCCESS]


def test_warm_shutdown_finishes_the_running_task_and_requeues_prefetched(e2e: E2E, broker: str) -> None:
    write_app(e2e, broker)
    worker = e2e.start_worker("-P", "prefork", "-c", "1", name="warm")
    running = e2e.app.tasks["e2e.sleep"].delay(1.5)
    queued = [e2e.app.tasks["e2e.add"].delay(i, i) for i in range(3)]
    wait_for_state(running, states.STARTED)
    worker.signal(signal.SIGTERM)
    assert worker.process.wait(30) == 0
    assert running.state == states.SUCCESS
    assert [r.state for r in queued] == [states.PENDING] * 3
    assert e2e.app.broker.queue_sizes(["celery"]) == {"celery": 3}
    # What runs is counted apart from what went back (RabbitMQ may not have pushed all three yet).
    assert re.search(r"Warm shutdown: finishing 1 running tasks, [0-3] not started went back", worker.log)
    e2e.start_worker(name="next")
    assert [r.get(timeout=20) for r in queued] == [0, 2, 4]


@pytest.mark.parametrize("pool", ["prefork", "solo"])
def test_second_signal_is_a_cold_shutdown(e2e: E2E, broker: str, pool: str) -> None:
    """SIGTERM then SIGINT: stop now; an acks_late task in flight goes back to the queue."""
    write_app(e2e, broker, task_acks_late=True)
    worker = e2e.start_worker("-P", pool, "-c", "1", name=f"cold-{pool}")
    result = e2e.app.tasks["e2e.sleep"].delay(30)
    wait_for_state(result, states.STARTED)
    worker.signal(signal.SIGTERM)
    worker.wait_for_log("Warm shutdown")
    started = time.monotonic()
    worker.signal(signal.SIGINT)
    worker.process.wait(15)
    assert time.monotonic() - started < 10
    assert "Cold shutdown" in worker.log
    assert e2e.app.broker.queue_sizes(["celery"]) == {"celery": 1}
    [delivery] = e2e.app.broker.fetch(["celery"], 1, 0)
    assert delivery.attempts == 1  # returned at once (a give-back is not counted as a failed delivery)


def test_bad_input_is_reported_and_the_worker_keeps_running(e2e: E2E, broker: str) -> None:
    """Unknown task: FAILURE naming it. Malformed message: dead letter with the reason logged."""
    write_app(e2e, broker)
    worker = e2e.start_worker("-P", "threads", name="robust")
    task_id = e2e.cli("-A", "e2eapp", "call", "e2e.missing", "--args", "[1]").stdout.strip()
    shown = e2e.cli("-A", "e2eapp", "result", task_id, "--wait", "--timeout", "20").stdout
    assert shown.startswith("FAILURE") and "e2e.missing" in shown and "not registered" in shown
    e2e.app.broker.publish([Outgoing("celery", b"{not json")])
    worker.wait_for_log("dead-letter")
    wait_for(lambda: e2e.app.broker.dead_letters() != [])  # the log line comes just before the move
    [letter] = e2e.app.broker.dead_letters()
    assert letter.queue == "celery" and letter.body == b"{not json" and "undecodable message" in letter.reason
    assert e2e.app.tasks["e2e.add"].delay(2, 3).get(timeout=20) == 5
    assert worker.process.poll() is None
    listed = e2e.cli("-A", "e2eapp", "dead-letters").stdout
    assert "undecodable" in listed and "celery" in listed and "1 dead letter(s) shown." in listed
    assert e2e.cli("-A", "e2eapp", "dead-letters", "--requeue").stdout.strip() == "Requeued 1 dead letter(s)."
    worker.wait_for_log("dead-letter", count=2)  # still garbage: back to the dead letters, worker fine
    assert worker.process.poll() is None


def test_prefork_children_die_with_their_sigkilled_worker_and_the_task_runs_once_more(e2e: E2E) -> None:
    """SIGKILL of the main process mid-task: its children stop within a second, so the redelivered
    task's body runs once more, not twice (the orphan does not finish it too)."""
    e2e.write_app(lease=2, task_acks_late=True)
    doomed = e2e.start_worker("-P", "prefork", "-c", "2", name="doomed")
    runs = e2e.directory / "runs.txt"
    result = e2e.app.tasks["e2e.record_after"].delay(2.5, str(runs))
    wait_for_state(result, states.STARTED)
    children = children_of(doomed.process.pid)
    assert len(children) == 2
    os.kill(doomed.process.pid, signal.SIGKILL)
    doomed.process.wait(10)
    deadline = time.monotonic() + 1.0
    while any(alive(child) for child in children) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [child for child in children if alive(child)] == []
    time.sleep(3)  # past the moment the task would have finished in an orphan
    assert not runs.exists()
    e2e.start_worker("-P", "prefork", "-c", "1", name="rescuer")
    assert isinstance(result.get(timeout=30), int)
    assert len(runs.read_text().splitlines()) == 1
