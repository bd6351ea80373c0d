"""Celery usage found in projects' task modules and tests, written with Celery's imports renamed;
run by test_pytest_plugin.py on Conveyor and, renamed back, on Celery 5 (not collected otherwise)."""

import json
import os
import time
from datetime import timedelta

import pytest

from conveyor import current_task, group
from conveyor._state import get_current_task
from conveyor.app.task import Task
from conveyor.beat import Scheduler
from conveyor.result import GroupResult, ResultSet
from conveyor.utils.time import humanize_seconds, maybe_timedelta

pytest_plugins = ("conveyor.contrib.pytest",)


@pytest.fixture(scope="session")
def celery_config():
    # The store under test (USAGE_STORE, set by test_pytest_plugin.py: Redis, SQLite), else memory.
    store = json.loads(os.environ.get("USAGE_STORE") or "{}")
    return {"broker_url": "memory://", "result_backend": "cache+memory://", "task_serializer": "json", **store}


def test_map_starmap_and_chunks_run_on_the_worker(celery_app, celery_worker):
    @celery_app.task
    def add(x, y):
        return x + y

    @celery_app.task
    def double(x):
        return 2 * x

    celery_worker.reload()
    assert double.map([1, 2, 3]).apply_async().get(timeout=10) == [2, 4, 6]
    assert add.starmap([(1, 2), (3, 4)]).apply_async().get(timeout=10) == [3, 7]
    parts = add.chunks([(i, i) for i in range(5)], 2)
    assert parts.apply_async().get(timeout=10) == [[0, 2], [4, 6], [8]]
    assert len(parts.group().tasks) == 3


def test_current_task_names_the_running_task(celery_app, celery_worker):
    @celery_app.task(name="usage.whoami")
    def whoami():
        return [current_task.name, current_task.request.id, get_current_task().name]

    celery_worker.reload()
    result = whoami.delay()
    assert result.get(timeout=10) == ["usage.whoami", result.id, "usage.whoami"]
    assert get_current_task() is None


def test_a_task_class_from_the_app_task_module(celery_app, celery_worker):
    class Tagged(Task):
        abstract = True

        def __call__(self, *args, **kwargs):
            return ["tagged", *super().__call__(*args, **kwargs)]

    @celery_app.task(base=Tagged)
    def pair(x):
        return [x, x]

    celery_worker.reload()
    assert pair.delay(3).get(timeout=10) == ["tagged", 3, 3]


def test_groups_saved_and_restored_and_result_sets(celery_app, celery_worker):
    @celery_app.task
    def square(x):
        return x * x

    celery_worker.reload()
    saved = group(square.s(i) for i in range(4)).apply_async()
    saved.save()
    restored = GroupResult.restore(saved.id, app=celery_app)
    assert [r.id for r in restored.results] == [r.id for r in saved.results]
    assert restored.get(timeout=10) == [0, 1, 4, 9]
    assert GroupResult.restore("never-saved", app=celery_app) is None
    results = ResultSet([square.delay(5), square.delay(6)])
    assert results.get(timeout=10) == [25, 36] and results.completed_count() == 2


def test_time_helpers():
    assert maybe_timedelta(30) == timedelta(seconds=30)
    assert maybe_timedelta(timedelta(minutes=1)) == timedelta(minutes=1)
    assert humanize_seconds(3600) == "1.00 hour"
    assert humanize_seconds(0) == "now"


def test_chains_called_directly_and_signatures_called_in_process(celery_app, celery_worker):
    from conveyor import chain

    @celery_app.task
    def add(x, y):
        return x + y

    celery_worker.reload()
    assert chain(add.s(1, 2), add.s(3))().get(timeout=10) == 6
    assert add.s(2, 2)() == 4 and add.s(2)(5) == 7
    assert add.apply((1, 2)).get() == 3


def test_a_results_children_are_the_tasks_it_sent(celery_app, celery_worker):
    @celery_app.task
    def leaf(x):
        return x * 10

    @celery_app.task
    def parent(n):
        return [leaf.delay(i).id for i in range(n)]

    celery_worker.reload()
    result = parent.delay(2)
    sent = result.get(timeout=10)
    assert [child.id for child in result.children] == sent
    assert [value for _, value in result.collect(timeout=10)] == [sent, 0, 10]


def test_a_custom_scheduler_sends_its_own_entries(celery_app, celery_worker):
    @celery_app.task(name="usage.stamp")
    def stamp(word):
        return word.upper()

    class FromTheDatabase(Scheduler):
        """A scheduler whose entries come from elsewhere (here: a list), as projects write them."""

        def setup_schedule(self):
            self.sent = []
            self.update_from_dict({"stamp": {"task": "usage.stamp", "schedule": 0.2, "args": ("tick",)}})

        def apply_async(self, entry, producer=None, advance=True, **kwargs):
            result = super().apply_async(entry, producer=producer, advance=advance, **kwargs)
            self.sent.append(result)
            return result

    celery_worker.reload()
    scheduler = FromTheDatabase(app=celery_app, max_interval=0.5)
    assert 0 < scheduler.tick() <= 0.5  # not due yet: a new entry counts from now
    deadline = time.monotonic() + 10
    while len(scheduler.sent) < 2 and time.monotonic() < deadline:
        time.sleep(max(0.0, scheduler.tick()))
    assert [result.get(timeout=10) for result in scheduler.sent] == ["TICK", "TICK"]
    assert scheduler.schedule["stamp"].total_run_count == 2
    scheduler.close()
