"""`conveyor beat` and `worker -B` with real processes, on SQLite, Redis and RabbitMQ (whose beat
state lives in its state store)."""

from __future__ import annotations

import itertools
import re
import signal
import time
from datetime import datetime

import pytest

from tests.processes import E2E

# Timed to the second: never beside a test that boots a RabbitMQ node of its own, whose Erlang
# start-up takes both cores for seconds (a beat starved that long skips ticks, as Celery's does).
pytestmark = pytest.mark.xdist_group("clock")

SCHEDULE = {"tick": {"task": "e2e.add", "schedule": 1.0, "args": (1, 1)}}
SENT = re.compile(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): INFO/MainProcess\] Scheduler: Sending due task tick")


@pytest.fixture(params=["sqlite", "redis", "amqp"])
def beat_env(request: pytest.FixtureRequest, e2e: E2E) -> E2E:
    if request.param == "redis":
        url, options = request.getfixturevalue("redis_store")
        e2e.write_app(broker=url, options=options, beat_schedule=SCHEDULE)
    elif request.param == "amqp":
        e2e.write_rabbitmq_app(beat_schedule=SCHEDULE)
    else:
        e2e.write_app(beat_schedule=SCHEDULE)
    return e2e


def sent_times(env: E2E) -> list[float]:
    times = []
    for worker in env.workers:
        for stamp in SENT.findall(worker.log):
            times.append(datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp())
    return sorted(times)


def assert_each_tick_once(times: list[float]) -> None:
    """No tick of the every-second entry was sent twice: a repeat would come within moments of the
    first (two beats racing for one tick: milliseconds), and the count would exceed the seconds
    covered. (A send that was late, its process busy, is followed by one on time: a gap of a
    tenth of a second or more, seen down to 0.17 s on a loaded machine, that is no repeat.)"""
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) > 0.05, gaps
    assert len(times) <= round(times[-1] - times[0]) + 1, gaps


def count_over(env: E2E, seconds: float) -> int:
    """Submissions in a window of `seconds` that starts at the first one."""
    deadline = time.monotonic() + 15
    while not sent_times(env):
        assert time.monotonic() < deadline, "beat sent nothing"
        time.sleep(0.05)
    start = sent_times(env)[0]
    time.sleep(seconds + 0.5)
    return sum(1 for t in sent_times(env) if t < start + seconds)


def test_one_beat_sends_every_second(beat_env: E2E) -> None:
    """A 1-second interval for 10 s gives 10 +/- 1 submissions; the log says what it sent."""
    beat_env.start_beat()
    assert 9 <= count_over(beat_env, 10) <= 11


def test_three_beats_still_send_each_run_once(beat_env: E2E) -> None:
    for name in ("beat-a", "beat-b", "beat-c"):
        beat_env.start_beat(name=name)
    assert 9 <= count_over(beat_env, 10) <= 11
    assert_each_tick_once(sent_times(beat_env))


def test_killing_the_submitting_beat_keeps_submissions_going(beat_env: E2E) -> None:
    beats = [beat_env.start_beat(name=name) for name in ("beat-a", "beat-b")]
    count_over(beat_env, 2)
    submitting = max(beats, key=lambda b: len(SENT.findall(b.log)))
    submitting.kill_group()
    killed_at = time.time()
    time.sleep(6)
    after = [t for t in sent_times(beat_env) if t > killed_at]
    assert after and after[0] - killed_at < 5
    assert len(after) >= 4


def test_a_restarted_beat_neither_repeats_nor_skips(beat_env: E2E) -> None:
    first = beat_env.start_beat(name="first")
    count_over(beat_env, 3)
    first.signal(signal.SIGTERM)
    first.process.wait(10)
    beat_env.start_beat(name="second")
    time.sleep(4)
    times = sent_times(beat_env)
    assert_each_tick_once(times)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert max(gaps) < 2.5, gaps  # nothing skipped beyond the restart itself


def test_worker_with_embedded_beat_runs_the_submitted_tasks(beat_env: E2E) -> None:
    worker = beat_env.start_worker("-B", "-P", "threads", name="wb")
    worker.wait_for_log("Scheduler: Sending due task tick (e2e.add)", timeout=10)
    worker.wait_for_log("succeeded in", timeout=10)
    assert "Task e2e.add[" in worker.log


CUSTOM_SCHEDULER = """

from conveyor.beat import PersistentScheduler


class EveryHalfSecond(PersistentScheduler):
    def setup_schedule(self):
        super().setup_schedule()
        self.update_from_dict({"half": {"task": "e2e.add", "schedule": 0.5, "args": (2, 3)}})
"""


def test_beat_runs_a_projects_own_scheduler_class(e2e: E2E) -> None:
    e2e.write_app()
    with open(e2e.directory / "e2eapp.py", "a") as module:
        module.write(CUSTOM_SCHEDULER)
    beat = e2e.start_beat("-S", "e2eapp:EveryHalfSecond", "-s", str(e2e.directory / "schedule"), name="custom")
    beat.wait_for_log("Scheduler: Sending due task half (e2e.add)", timeout=10, count=2)
    worker = e2e.start_worker("-P", "threads", name="runs")
    worker.wait_for_log("succeeded in", timeout=10)
    beat.signal(signal.SIGTERM)
    assert beat.process.wait(10) == 0
    assert any((e2e.directory).glob("schedule*"))  # the PersistentScheduler's shelve file


def test_worker_with_embedded_beat_runs_the_configured_scheduler(e2e: E2E) -> None:
    e2e.write_app(beat_scheduler="e2eapp:EveryHalfSecond", beat_schedule_filename="embedded-schedule")
    with open(e2e.directory / "e2eapp.py", "a") as module:
        module.write(CUSTOM_SCHEDULER)
    worker = e2e.start_worker("-B", "-P", "threads", name="wbc")
    worker.wait_for_log("Scheduler: Sending due task half (e2e.add)", timeout=10)
    worker.wait_for_log("succeeded in", timeout=10)
