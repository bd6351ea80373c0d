"""Celery's scheduler classes: a project's own scheduler, run by beat as Celery runs it."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from conveyor import Celery
from conveyor.beat import PersistentScheduler, ScheduleEntry, Scheduler
from conveyor.exceptions import ImproperlyConfigured
from conveyor.schedulers import configured


@pytest.fixture
def app() -> Celery:
    app = Celery("sched", broker="memory://sched-" + os.urandom(4).hex())

    @app.task(name="sched.ping")
    def ping(word: str) -> str:
        return word

    return app


def queued(app: Celery) -> int:
    return app.broker.queue_sizes(["celery"])["celery"]


def test_a_due_entry_is_sent_once_and_its_run_recorded(app: Celery) -> None:
    earlier = datetime.now(UTC) - timedelta(seconds=30)
    scheduler = Scheduler(app, max_interval=5)
    scheduler.add(name="ping", task="sched.ping", schedule=10.0, args=("hi",), last_run_at=earlier)
    assert scheduler.tick() == 0  # sent
    assert queued(app) == 1
    entry = scheduler.schedule["ping"]
    assert entry.total_run_count == 1 and entry.last_run_at > earlier
    assert 4 < scheduler.tick() <= 5  # the next run is 10 s away: sleep the longest allowed
    assert queued(app) == 1


def test_the_configured_beat_schedule_is_the_base_schedulers_entries(app: Celery) -> None:
    app.conf.beat_schedule = {"every-minute": {"task": "sched.ping", "schedule": 60.0, "args": ("m",)}}
    scheduler = Scheduler(app)
    assert list(scheduler.schedule) == ["every-minute"]
    assert scheduler.schedule["every-minute"].args == ("m",)
    assert Scheduler(app, lazy=True).schedule == {}


def test_merging_keeps_the_last_run_of_entries_that_stay(app: Celery) -> None:
    scheduler = Scheduler(app, lazy=True)
    then = datetime(2030, 1, 1, tzinfo=UTC)
    scheduler.update_from_dict(
        {"a": {"task": "t.a", "schedule": 5.0, "last_run_at": then}, "b": {"task": "t.b", "schedule": 5.0}}
    )
    scheduler.merge_inplace({"a": {"task": "t.a2", "schedule": 7.0}})
    assert list(scheduler.schedule) == ["a"]
    assert scheduler.schedule["a"].task == "t.a2" and scheduler.schedule["a"].last_run_at == then


def test_an_entry_copies_itself_forward_after_a_run() -> None:
    entry = ScheduleEntry(name="e", task="t", schedule=timedelta(seconds=3), args=(1,), kwargs={"k": 2})
    after = next(entry)
    assert after == entry and after is not entry  # equal in what can be edited
    assert after.total_run_count == 1 and after.args == (1,) and after.kwargs == {"k": 2}
    due, next_in = ScheduleEntry(task="t", schedule=3.0, last_run_at=datetime.now(UTC) - timedelta(seconds=9)).is_due()
    assert due and next_in == pytest.approx(3.0, abs=0.1)


def test_the_persistent_scheduler_remembers_runs_across_restarts(app: Celery, tmp_path: Path) -> None:
    app.conf.beat_schedule = {"ping": {"task": "sched.ping", "schedule": 3600.0, "args": ("p",)}}
    filename = str(tmp_path / "schedule")
    first = PersistentScheduler(app, schedule_filename=filename)
    first.schedule["ping"].last_run_at = datetime.now(UTC) - timedelta(hours=2)
    assert first.tick() == 0 and queued(app) == 1
    ran_at = first.schedule["ping"].last_run_at
    first.close()
    second = PersistentScheduler(app, schedule_filename=filename)
    assert second.schedule["ping"].last_run_at == ran_at and second.schedule["ping"].total_run_count == 1
    assert second.tick() > 0 and queued(app) == 1  # ran an hour ago at most: not again
    assert second.info == f"    . db -> {filename}"
    second.close()


class Slow(Scheduler):
    max_interval = 42.0


def test_beat_scheduler_names_the_class_beat_runs(app: Celery) -> None:
    assert configured(app) is None  # Conveyor's own beat
    app.conf.beat_scheduler = f"{__name__}:Slow"
    assert isinstance(configured(app), Slow)
    app.conf.beat_scheduler = f"{__name__}.Slow"
    assert isinstance(configured(app), Slow)
    app.conf.beat_scheduler = "conveyor.beat:ScheduleEntry"
    with pytest.raises(ImproperlyConfigured, match="subclass of conveyor.beat.Scheduler"):
        configured(app)


def test_one_broken_entry_does_not_stop_the_others(app: Celery) -> None:
    class Broken(ScheduleEntry):
        def is_due(self) -> tuple[bool, float]:
            raise ValueError("cannot compute")

    scheduler = Scheduler(app, max_interval=1)
    scheduler.schedule["broken"] = Broken(name="broken", task="sched.ping", schedule=1.0, app=app)
    scheduler.add(
        name="ok", task="sched.ping", schedule=1.0, args=("ok",), last_run_at=datetime(2000, 1, 1, tzinfo=UTC)
    )
    deadline = time.monotonic() + 5
    while queued(app) == 0 and time.monotonic() < deadline:
        time.sleep(scheduler.tick())
    assert queued(app) == 1
