"""Execution semantics with real worker processes: time limits, terminate, recycling,
redelivery limits and the global rate limit."""

from __future__ import annotations

import time

import pytest

from conveyor import states
from conveyor.exceptions import TaskRevokedError, TimeLimitExceeded, WorkerLostError
from tests.processes import E2E


def test_global_rate_limit_across_two_worker_processes(e2e: E2E) -> None:
    """'10/s' on two workers runs 10 tasks a second in total (within 20%)."""
    e2e.write_app()
    e2e.start_worker("-P", "threads", "-c", "2", name="a")
    e2e.start_worker("-P", "threads", "-c", "2", name="b")
    results = [e2e.app.tasks["e2e.limited"].delay(i) for i in range(40)]
    times = sorted(r.get(timeout=60) for r in results)
    rate = (len(times) - 1) / (times[-1] - times[0])
    assert 8 <= rate <= 12, rate
    assert {r.scoreboard["worker"] for r in results} == {"a@e2e", "b@e2e"}


def test_hard_time_limit_and_recycling(e2e: E2E) -> None:
    e2e.write_app()
    e2e.start_worker("-P", "prefork", "-c", "1", "--max-tasks-per-child", "2", name="limits")
    slow = e2e.app.tasks["e2e.sleep"].apply_async((30,), time_limit=1)
    with pytest.raises(TimeLimitExceeded):
        slow.get(timeout=20)
    pids = [e2e.app.tasks["e2e.sleep"].delay(0).get(timeout=20) for _ in range(4)]
    assert pids[0] == pids[1] and pids[2] == pids[3] and pids[1] != pids[2]


def test_terminate_a_running_task(e2e: E2E) -> None:
    e2e.write_app()
    worker = e2e.start_worker("-P", "prefork", "-c", "1", name="term")
    result = e2e.app.tasks["e2e.sleep"].delay(60)
    deadline = time.monotonic() + 20
    while result.state != states.STARTED:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    e2e.cli("-A", "e2eapp", "revoke", result.id, "--terminate")
    with pytest.raises(TaskRevokedError):
        result.get(timeout=20)
    worker.wait_for_log("Terminating e2e.sleep")
    assert e2e.app.tasks["e2e.add"].delay(1, 1).get(timeout=20) == 2


def test_poison_message_is_redelivered_at_most_max_redeliveries_times(e2e: E2E) -> None:
    e2e.write_app(task_max_redeliveries=3)
    worker = e2e.start_worker("-P", "prefork", "-c", "1", name="poison")
    result = e2e.app.tasks["e2e.die"].delay()
    with pytest.raises(WorkerLostError, match="task_max_redeliveries=3"):
        result.get(timeout=60)
    assert [h["state"] for h in result.scoreboard["history"]].count(states.STARTED) == 4
    assert worker.process.poll() is None
