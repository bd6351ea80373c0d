"""Custom Task classes as Celery code writes them: base=, task_cls, app.Task, hooks, __call__, run."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from conveyor import Celery, Task, states
from tests.conftest import STORES, contract_app, store_url
from tests.contract.test_worker_contract import running

calls: list[tuple[Any, ...]] = []


class Recorded(Task):  # type: ignore[type-arg]
    abstract = True
    max_retries = 1
    default_retry_delay = 0.05

    def before_start(self, task_id, args, kwargs):  # type: ignore[no-untyped-def]
        calls.append(("before_start", task_id, tuple(args), dict(kwargs)))

    def on_success(self, retval, task_id, args, kwargs):  # type: ignore[no-untyped-def]
        calls.append(("on_success", retval, task_id))

    def on_failure(self, exc, task_id, args, kwargs, einfo):  # type: ignore[no-untyped-def]
        calls.append(("on_failure", repr(exc), task_id, "ValueError" in einfo.traceback))

    def on_retry(self, exc, task_id, args, kwargs, einfo):  # type: ignore[no-untyped-def]
        calls.append(("on_retry", repr(exc), task_id))

    def after_return(self, status, retval, task_id, args, kwargs, einfo):  # type: ignore[no-untyped-def]
        calls.append(("after_return", status, task_id))


class Wrapping(Task):  # type: ignore[type-arg]
    """The Flask app-context pattern: __call__ wraps every run."""

    def __call__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(("enter", self.name))
        try:
            return self.run(*args, **kwargs)
        finally:
            calls.append(("exit", self.name))


@pytest.fixture(params=STORES)
def app(request: pytest.FixtureRequest, tmp_path) -> Iterator[Celery]:  # type: ignore[no-untyped-def]
    calls.clear()
    application = contract_app("classes", store_url(request.param, tmp_path))
    yield application
    application.close()


def test_hooks_of_a_base_class_are_called_with_celerys_arguments(app: Celery) -> None:
    @app.task(base=Recorded, name="c.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(base=Recorded, name="c.fail", bind=True)
    def fail(self: Task) -> None:  # type: ignore[type-arg]
        if self.request.retries == 0:
            raise self.retry(exc=ValueError("again"))
        raise ValueError("broken")

    assert isinstance(add, Recorded) and add.max_retries == 1
    with running(app, "threads"):
        ok = add.delay(2, 3)
        assert ok.get(timeout=10) == 5
        bad = fail.delay()
        with pytest.raises(ValueError):
            bad.get(timeout=10)
    assert calls[:3] == [
        ("before_start", ok.id, (2, 3), {}),
        ("on_success", 5, ok.id),
        ("after_return", states.SUCCESS, ok.id),
    ]
    assert ("on_retry", "ValueError('again')", bad.id) in calls
    assert ("after_return", states.RETRY, bad.id) in calls
    assert calls[-2:] == [
        ("on_failure", "ValueError('broken')", bad.id, True),
        ("after_return", states.FAILURE, bad.id),
    ]


def test_task_cls_and_app_task_choose_the_class_of_every_task(tmp_path) -> None:  # type: ignore[no-untyped-def]
    app = Celery("classes", broker=f"sqlite:///{tmp_path}/q.db", task_cls=Wrapping)

    @app.task
    def first() -> int:
        return 1

    app.Task = Recorded

    @app.task
    def second() -> int:
        return 2

    named = Celery("named", broker=f"sqlite:///{tmp_path}/r.db", task_cls="tests.contract.test_task_classes:Recorded")

    @named.task
    def third() -> int:
        return 3

    try:
        assert type(first) is Wrapping and type(second) is Recorded and type(third) is Recorded
    finally:
        app.close()
        named.close()


def test_an_overridden_call_wraps_every_run_in_the_worker_and_eagerly(app: Celery) -> None:
    @app.task(base=Wrapping, name="c.wrapped")
    def wrapped(x: int) -> int:
        calls.append(("body", x))
        return x

    with running(app, "threads"):
        assert wrapped.delay(4).get(timeout=10) == 4
    assert calls == [("enter", "c.wrapped"), ("body", 4), ("exit", "c.wrapped")]
    calls.clear()
    assert wrapped.apply((5,)).get() == 5
    assert calls == [("enter", "c.wrapped"), ("body", 5), ("exit", "c.wrapped")]


def test_a_class_based_task_overrides_run(app: Celery) -> None:
    class Double(Task):  # type: ignore[type-arg]
        def run(self, x: int) -> int:  # type: ignore[override]
            return 2 * x

    @app.task(base=Double, name="c.double")
    def double(x: int) -> int:
        raise AssertionError("run() is the body")

    with running(app, "threads"):
        assert double.delay(21).get(timeout=10) == 42
        assert app.tasks["c.double"] is double
        assert app.send_task("c.double", (5,)).get(timeout=10) == 10


def test_ignore_records_nothing_and_reject_requeues_or_dead_letters(app: Celery) -> None:
    from conveyor.exceptions import Ignore, Reject

    seen: list[int] = []

    @app.task(name="c.ignore", bind=True)
    def ignore(self: Task) -> None:  # type: ignore[type-arg]
        self.update_state(state="PROGRESS", meta={"done": 1})
        raise Ignore()

    @app.task(name="c.reject", acks_late=True)
    def reject(requeue: bool) -> None:
        seen.append(requeue)
        if requeue and seen.count(True) == 1:
            raise Reject("not now", requeue=True)
        if not requeue:
            raise Reject("never")

    with running(app, "threads"):
        ignored = ignore.delay()
        again = reject.delay(True)
        assert again.get(timeout=10) is None  # given back once, then run to the end
        assert seen.count(True) == 2
        never = reject.delay(False)
        deadline = time.monotonic() + 10
        while not app.broker.dead_letters() and time.monotonic() < deadline:
            time.sleep(0.05)
    assert ignored.state == "PROGRESS" and ignored.info == {"done": 1}
    [letter] = app.broker.dead_letters()
    assert letter.reason == "task rejected: 'never'"
    assert never.state == states.PENDING


def test_allow_join_result_lets_a_task_wait_on_another(app: Celery) -> None:
    from conveyor.result import allow_join_result

    @app.task(name="c.inner")
    def inner() -> int:
        return 7

    @app.task(name="c.outer")
    def outer(allowed: bool) -> int | str:
        result = inner.delay()
        if not allowed:
            try:
                return result.get(timeout=10)  # type: ignore[no-any-return]
            except RuntimeError as exc:
                return str(exc)
        with allow_join_result():
            return result.get(timeout=10)  # type: ignore[no-any-return]

    with running(app, "threads", concurrency=2):
        assert "Never call result.get() within a task" in str(outer.delay(False).get(timeout=20))
        assert outer.delay(True).get(timeout=20) == 7
