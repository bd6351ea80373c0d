"""Celery usage found in projects' task modules and tests, written with Celery's imports renamed;
run by test_pytest_plugin.py on Conveyor and, renamed back, on Celery 5 (not collected otherwise)."""

import json
import logging
import os
import time
from datetime import UTC, datetime, timedelta

import pytest

from conveyor import Celery, current_task, group, shared_task
from conveyor._state import get_current_task
from conveyor.app.log import TaskFormatter
from conveyor.app.task import Task
from conveyor.beat import PersistentScheduler, ScheduleEntry, Scheduler
from conveyor.exceptions import Ignore, Retry
from conveyor.result import EagerResult, GroupResult, ResultSet
from conveyor.schedules import crontab
from conveyor.signals import (
    after_task_publish,
    before_task_publish,
    task_failure,
    task_postrun,
    task_prerun,
    task_received,
    task_success,
    task_unknown,
)
from conveyor.utils.log import get_task_logger
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


def test_a_shared_task_runs_on_the_app_of_the_moment(celery_app, celery_worker):
    @shared_task(bind=True, name="usage.shared", max_retries=5)
    def shared(self, x):
        return [self.name, self.max_retries, x * 2]

    celery_worker.reload()
    assert shared.delay(4).get(timeout=10) == ["usage.shared", 5, 8]
    assert celery_app.tasks["usage.shared"].max_retries == 5


def test_a_task_classs_hooks_get_celerys_arguments(celery_app, celery_worker):
    seen = []

    class Hooked(celery_app.Task):
        def before_start(self, task_id, args, kwargs):
            seen.append(("before_start", task_id, list(args)))

        def on_success(self, retval, task_id, args, kwargs):
            seen.append(("on_success", task_id, retval))

        def on_failure(self, exc, task_id, args, kwargs, einfo):
            seen.append(("on_failure", task_id, repr(exc), "ValueError" in str(einfo)))

        def after_return(self, status, retval, task_id, args, kwargs, einfo):
            seen.append(("after_return", task_id, status))

        def on_retry(self, exc, task_id, args, kwargs, einfo):
            seen.append(("on_retry", task_id, repr(exc), "KeyError" in str(einfo)))

    @celery_app.task(base=Hooked, name="usage.fine")
    def fine(x):
        return x + 1

    @celery_app.task(base=Hooked, name="usage.broken")
    def broken():
        raise ValueError("no")

    @celery_app.task(base=Hooked, bind=True, name="usage.flaky")
    def flaky(self):
        if not self.request.retries:
            raise self.retry(exc=KeyError("once"), countdown=0)
        return "second time"

    celery_worker.reload()
    ok = fine.delay(1)
    assert ok.get(timeout=10) == 2
    failed = broken.delay()
    with pytest.raises(ValueError):
        failed.get(timeout=10)
    deadline = time.monotonic() + 5
    while len(seen) < 6 and time.monotonic() < deadline:  # after_return may trail the result
        time.sleep(0.05)
    assert seen == [
        ("before_start", ok.id, [1]), ("on_success", ok.id, 2), ("after_return", ok.id, "SUCCESS"),
        ("before_start", failed.id, []), ("on_failure", failed.id, "ValueError('no')", True),
        ("after_return", failed.id, "FAILURE"),
    ]  # fmt: skip
    retried = flaky.delay()
    assert retried.get(timeout=10) == "second time"
    deadline = time.monotonic() + 5
    while len(seen) < 11 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ("on_retry", retried.id, "KeyError('once')", True) in seen
    assert seen[-1] == ("after_return", retried.id, "SUCCESS")


def test_task_log_lines_name_their_task(celery_app, celery_worker):
    lines = []

    class Keep(logging.Handler):
        def emit(self, record):
            lines.append(self.format(record))

    handler = Keep()
    handler.setFormatter(TaskFormatter("%(task_name)s[%(task_id)s] %(levelname)s %(message)s", use_color=False))
    logger = get_task_logger("usage.logging")
    logger.addHandler(handler)
    try:

        @celery_app.task(name="usage.logs")
        def logs():
            logger.error("inside")  # Celery's test worker logs at ERROR
            return 1

        celery_worker.reload()
        result = logs.delay()
        assert result.get(timeout=10) == 1
        logger.error("outside")
    finally:
        logger.removeHandler(handler)
    assert f"usage.logs[{result.id}] ERROR inside" in lines
    assert "???[???] ERROR outside" in lines


def test_signals_carry_celerys_arguments(celery_app, celery_worker):
    got = {}

    def keep(name):
        def receiver(sender=None, **kwargs):
            got.setdefault(name, []).append({"sender": sender, **kwargs})

        return receiver

    receivers = {
        signal: keep(name)
        for name, signal in [
            ("before_task_publish", before_task_publish), ("after_task_publish", after_task_publish),
            ("task_prerun", task_prerun), ("task_postrun", task_postrun), ("task_success", task_success),
            ("task_failure", task_failure),
        ]
    }  # fmt: skip
    for signal, receiver in receivers.items():
        signal.connect(receiver)
    try:

        @celery_app.task(name="usage.signalled")
        def signalled(x, y=0):
            if x < 0:
                raise KeyError(x)
            return x + y

        celery_worker.reload()
        ok = signalled.apply_async((1,), {"y": 2})
        assert ok.get(timeout=10) == 3
        failed = signalled.delay(-1)
        with pytest.raises(KeyError):
            failed.get(timeout=10)
        time.sleep(0.3)  # task_postrun may trail the result
    finally:
        for signal, receiver in receivers.items():
            signal.disconnect(receiver)
    [published] = [p for p in got["before_task_publish"] if p["headers"]["id"] == ok.id]
    assert published["sender"] == "usage.signalled" and published["headers"]["task"] == "usage.signalled"
    args, kwargs, embed = published["body"]
    assert (list(args), kwargs) == ([1], {"y": 2}) and "callbacks" in embed
    assert any(p["headers"]["id"] == ok.id for p in got["after_task_publish"])
    [prerun] = [p for p in got["task_prerun"] if p["task_id"] == ok.id]
    assert prerun["task"].name == "usage.signalled" and list(prerun["args"]) == [1] and prerun["kwargs"] == {"y": 2}
    [postrun] = [p for p in got["task_postrun"] if p["task_id"] == ok.id]
    assert postrun["retval"] == 3 and postrun["state"] == "SUCCESS"
    # (Celery's worker fixture pings the worker as it starts: that task's success may come late.)
    assert [s["result"] for s in got["task_success"] if s["sender"].name == "usage.signalled"] == [3]
    [failure] = got["task_failure"]
    assert failure["task_id"] == failed.id and isinstance(failure["exception"], KeyError)
    assert list(failure["args"]) == [-1] and failure["traceback"] is not None


def test_periodic_tasks_added_when_the_app_is_configured():
    app = Celery("hooks", set_as_current=False)

    @app.task(name="usage.periodic")
    def periodic(word):
        return word

    @app.on_after_configure.connect
    def setup_periodic_tasks(sender, **kwargs):
        sender.add_periodic_task(10.0, periodic.s("hello"), name="say every 10")
        sender.add_periodic_task(crontab(hour=7, minute=30, day_of_week=1), periodic.s("monday"), expires=60)

    app.conf.timezone = "UTC"  # configuring the app: its receivers run
    app.finalize()
    schedule = app.conf.beat_schedule
    assert schedule["say every 10"]["task"] == "usage.periodic"
    assert schedule["say every 10"]["schedule"] == 10.0 and list(schedule["say every 10"]["args"]) == ["hello"]
    [monday] = [entry for name, entry in schedule.items() if name != "say every 10"]
    assert list(monday["args"]) == ["monday"] and monday["options"]["expires"] == 60
    assert monday["schedule"].remaining_estimate is not None


def test_celerys_setting_names_are_accepted(celery_app):
    settings = {
        "worker_hijack_root_logger": False, "worker_redirect_stdouts": False, "worker_log_format": "%(message)s",
        "broker_connection_retry_on_startup": True, "task_send_sent_event": True, "beat_schedule_filename": "s",
        "result_backend_transport_options": {"visibility_timeout": 60},
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "task_default_exchange": "tasks", "task_default_routing_key": "tasks", "broker_pool_limit": 10,
    }  # fmt: skip
    celery_app.conf.update(settings)
    assert {name: celery_app.conf[name] for name in settings} == settings


def test_the_apps_task_class_by_argument_and_by_attribute():
    class Audited(Task):
        audited = True

    class Plain(Task):
        plain = True

    app = Celery("classes", task_cls=Audited, set_as_current=False)

    @app.task
    def first():
        return 1

    assert first.audited and first.run() == 1  # (Celery makes the task here, on first use)
    app.Task = Plain

    @app.task
    def second():
        return 2

    assert second.plain and second() == 2 and not hasattr(second, "audited")
    assert app.tasks[first.name].audited


def test_task_semantics_projects_test_for(celery_app, celery_worker):
    @celery_app.task(bind=True, name="usage.retrying", max_retries=2)
    def retrying(self, reason=None):
        raise self.retry(countdown=0.1, exc=ValueError(reason) if reason else None)

    @celery_app.task(name="usage.ignored")
    def ignored():
        raise Ignore()

    @celery_app.task(name="usage.after")
    def after(x):
        return x

    with pytest.raises(Retry):  # called directly, as tests call tasks
        retrying()
    with pytest.raises(ValueError, match="again"):  # the reason given, raised as it is
        retrying("again")
    eager = after.apply((7,))
    assert isinstance(eager, EagerResult) and eager.get() == 7 and eager.successful()
    celery_worker.reload()
    result = ignored.delay()
    assert after.delay(8).get(timeout=10) == 8  # the worker went on
    assert result.state == "PENDING"  # an ignored task records nothing
    with pytest.raises(ValueError, match="spent"):  # retried twice, then the reason stands
        retrying.delay("spent").get(timeout=10)


def test_worker_signals_as_a_worker_sends_them(celery_app, celery_worker):
    got = []

    def received(sender=None, request=None, **kwargs):
        got.append(("received", request.id))

    def unknown(sender=None, name=None, **kwargs):
        got.append(("unknown", name))

    task_received.connect(received)
    task_unknown.connect(unknown)
    try:

        @celery_app.task(name="usage.received")
        def noticed():
            return 1

        celery_worker.reload()
        result = noticed.delay()
        assert result.get(timeout=10) == 1
        celery_app.send_task("usage.nobody-has-this")
        deadline = time.monotonic() + 10
        while ("unknown", "usage.nobody-has-this") not in got and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        task_received.disconnect(received)
        task_unknown.disconnect(unknown)
    assert ("received", result.id) in got and ("unknown", "usage.nobody-has-this") in got


def test_on_after_finalize_sees_the_tasks():
    app = Celery("finalized", set_as_current=False)
    seen = []

    @app.on_after_finalize.connect
    def finalized(sender, **kwargs):
        seen.append(sorted(name for name in sender.tasks if name.startswith("usage.")))

    @app.task(name="usage.late")
    def late():
        return 1

    app.finalize()
    assert "usage.late" in seen[0] and len(seen) == 1  # shared tasks of earlier cases join every app


def test_names_at_celerys_module_paths():
    from conveyor import states
    from conveyor.exceptions import MaxRetriesExceededError, Reject, SoftTimeLimitExceeded, TaskError, TimeoutError
    from conveyor.schedules import maybe_schedule, schedule
    from conveyor.worker.control import control_command, inspect_command

    assert states.SUCCESS == "SUCCESS" and states.FAILURE in states.READY_STATES
    assert issubclass(MaxRetriesExceededError, TaskError) and Reject(requeue=True).requeue
    assert issubclass(SoftTimeLimitExceeded, Exception) and issubclass(TimeoutError, Exception)
    every_minute = maybe_schedule(60)
    assert isinstance(every_minute, schedule) and every_minute.run_every == timedelta(seconds=60)
    due, next_check = every_minute.is_due(datetime.now(UTC) - timedelta(minutes=2))
    assert due and 0 < next_check <= 60
    remaining = crontab(minute=0).remaining_estimate(datetime.now(UTC))
    assert timedelta(0) <= remaining <= timedelta(hours=1)
    assert callable(control_command) and callable(inspect_command)


class Checked(ScheduleEntry):
    """An entry class of a project's own (at module level: the persistent schedule pickles entries)."""

    checks = 0

    def is_due(self):
        Checked.checks += 1
        return super().is_due()


class Kept(PersistentScheduler):
    Entry = Checked

    def apply_async(self, entry, producer=None, advance=True, **kwargs):
        result = super().apply_async(entry, producer=producer, advance=advance, **kwargs)
        self.sent.append(result)
        return result


def test_a_persistent_scheduler_and_its_entry_class_as_bases(celery_app, celery_worker, tmp_path):
    """beat_schedule entries with args, kwargs, options and relative, run by a PersistentScheduler
    subclass with its own Entry class; the runs are kept in its file across a restart."""

    @celery_app.task(name="usage.kept")
    def kept(word, times=1):
        return word * times

    celery_app.conf.beat_schedule = {
        "kept": {
            "task": "usage.kept", "schedule": timedelta(seconds=0.2), "args": ("ab",), "kwargs": {"times": 2},
            "options": {"expires": 30}, "relative": True,
        },
    }  # fmt: skip
    celery_worker.reload()
    filename = str(tmp_path / "beat-schedule")
    scheduler = Kept(app=celery_app, schedule_filename=filename, max_interval=0.5)
    scheduler.sent = []
    deadline = time.monotonic() + 10
    while not scheduler.sent and time.monotonic() < deadline:
        time.sleep(max(0.0, scheduler.tick()))
    assert scheduler.sent[0].get(timeout=10) == "abab"
    assert isinstance(scheduler.schedule["kept"], Checked) and Checked.checks > 0
    runs = scheduler.schedule["kept"].total_run_count
    scheduler.close()
    again = Kept(app=celery_app, schedule_filename=filename, max_interval=0.5)
    assert again.schedule["kept"].total_run_count == runs >= 1
    again.close()


def test_more_names_at_celerys_paths(celery_app, celery_worker):
    """The module itself under another name, kombu's Queue and Exchange, solar schedules, the
    current app's proxy, xmap and xstarmap, and joining a result inside a task when allowed."""
    import conveyor as queue_library
    from conveyor import Exchange, Queue
    from conveyor.canvas import xmap, xstarmap
    from conveyor.result import AsyncResult, allow_join_result
    from conveyor.schedules import solar

    other = queue_library.Celery("aliased", set_as_current=False)
    assert other.main == "aliased"
    other.close()
    images = Queue("images", Exchange("media", type="direct"), routing_key="media.images")
    assert (images.name, images.exchange.name, images.exchange.type, images.routing_key) == (
        "images", "media", "direct", "media.images",
    )  # fmt: skip
    celery_app.conf.task_queues = [images]
    dawn = solar("sunrise", 51.5, -0.12)
    due, next_check = dawn.is_due(datetime.now(UTC) - timedelta(days=2))
    assert due in (True, False) and next_check > 0
    assert timedelta(0) <= dawn.remaining_estimate(datetime.now(UTC)) <= timedelta(days=2)
    current_app = queue_library.current_app
    assert current_app.main == celery_app.main and current_app.conf.task_serializer == "json"

    @celery_app.task(name="usage.double")
    def double(x):
        return x * 2

    @celery_app.task(name="usage.multiply")
    def multiply(x, y):
        return x * y

    @celery_app.task(name="usage.joined")
    def joined(task_id):
        with allow_join_result():
            return AsyncResult(task_id).get(timeout=10) + 1

    celery_worker.reload()
    assert xmap(double.s(), [1, 2, 3]).delay().get(timeout=10) == [2, 4, 6]
    assert xstarmap(multiply.s(), [(2, 3), (4, 5)]).delay().get(timeout=10) == [6, 20]
    first = double.delay(20)
    assert first.get(timeout=10) == 40
    assert joined.delay(first.id).get(timeout=10) == 41


def test_tasks_found_in_listed_packages_by_autodiscovery(tmp_path, monkeypatch):
    package = tmp_path / "usage_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "jobs.py").write_text(
        "from conveyor import shared_task\n\n\n@shared_task(name='usage.discovered')\ndef discovered():\n    return 1\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    app = Celery("discovering", set_as_current=False)
    app.autodiscover_tasks(["usage_pkg"], related_name="jobs", force=True)
    assert "usage.discovered" in app.tasks


def test_an_error_outside_the_task_body_sends_task_internal_error():
    """A result no serializer can store: the task's code ran, the worker's own step after it failed."""
    from conveyor.contrib.testing.worker import start_worker
    from conveyor.serialization import register
    from conveyor.signals import task_internal_error

    def refuse(value):
        raise RuntimeError("this serializer encodes nothing")

    register("usage-refusing", refuse, lambda data: data, content_type="application/x-usage-refusing")
    app = Celery("internal", set_as_current=False)
    app.conf.update(
        {
            "broker_url": "memory://",
            "result_backend": "cache+memory://",
            **json.loads(os.environ.get("USAGE_STORE") or "{}"),
        }
    )
    app.conf.result_serializer = "usage-refusing"

    @app.task(name="usage.refused_result")
    def echo(x):
        return x

    errors = []

    def receiver(sender=None, task_id=None, exception=None, **kwargs):
        errors.append((task_id, exception))

    task_internal_error.connect(receiver)
    try:
        with start_worker(app, perform_ping_check=False):
            result = echo.delay(1)
            deadline = time.monotonic() + 10
            while not any(task_id == result.id for task_id, _ in errors) and time.monotonic() < deadline:
                time.sleep(0.05)
    finally:
        task_internal_error.disconnect(receiver)
    assert any(task_id == result.id and isinstance(error, Exception) for task_id, error in errors)
