"""Task execution semantics on every broker: retries, time limits, acks and
redeliveries, recycling, global rate limits, persistent revokes, callbacks, progress."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from conveyor import Celery, states
from conveyor.exceptions import (
    ImproperlyConfigured,
    MaxRetriesExceededError,
    SoftTimeLimitExceeded,
    TaskRevokedError,
    WorkerLostError,
)
from conveyor.worker import Worker
from tests.conftest import BROKERS, contract_app, store_url
from tests.contract.test_worker_contract import running

CALLS: dict[str, list[Any]] = {}


def make_app(store: tuple[str, dict[str, str]]) -> Celery:
    app = contract_app("semantics", store)

    @app.task(name="s.flaky", autoretry_for=(ValueError,), retry_backoff=0.2, retry_jitter=False, max_retries=3)
    def flaky(key: str, failures: int) -> int:
        calls = CALLS.setdefault(key, [])
        calls.append(time.monotonic())
        if len(calls) <= failures:
            raise ValueError(f"failure {len(calls)}")
        return len(calls)

    @app.task(name="s.never_retry", autoretry_for=(Exception,), dont_autoretry_for=(KeyError,))
    def never_retry() -> None:
        raise KeyError("not retried")

    @app.task(name="s.give_up", bind=True, max_retries=1, default_retry_delay=0.05)
    def give_up(self) -> None:  # type: ignore[no-untyped-def]
        raise self.retry()

    @app.task(name="s.request", bind=True)
    def request(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[no-untyped-def]
        r = self.request
        return {
            "id": r.id, "args": list(r.args), "kwargs": r.kwargs, "retries": r.retries, "hostname": r.hostname,
            "queue": r.delivery_info["routing_key"], "root_id": r.root_id, "parent_id": r.parent_id,
            "is_eager": r.is_eager, "headers": r.headers,
        }  # fmt: skip

    @app.task(name="s.soft")
    def soft() -> str:
        try:
            for _ in range(1000):
                time.sleep(0.01)
        except SoftTimeLimitExceeded:
            return "caught"
        return "not interrupted"

    @app.task(name="s.die", acks_late=True)
    def die() -> None:
        os._exit(1)

    @app.task(name="s.fail")
    def fail() -> None:
        raise RuntimeError("boom")

    @app.task(name="s.noop")
    def noop(i: int = 0) -> int:
        return i

    @app.task(name="s.pid")
    def pid(i: int) -> tuple[int, int]:
        return i, os.getpid()

    @app.task(name="s.limited", rate_limit="10/s")
    def limited(i: int) -> float:
        return time.time()

    @app.task(name="s.slow_loop")
    def slow_loop() -> str:
        for _ in range(3000):
            time.sleep(0.01)
        return "finished"

    @app.task(name="s.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="s.record")
    def record(*args: Any) -> None:
        CALLS.setdefault("record", []).append(list(args))

    @app.task(name="s.on_error")
    def on_error(request: Any, exc: BaseException, traceback: Any) -> None:
        CALLS.setdefault("on_error", []).append((request.id, repr(exc)))

    @app.task(name="s.progress", bind=True)
    def progress(self) -> str:  # type: ignore[no-untyped-def]
        self.update_state(state="PROGRESS", meta={"done": 1, "total": 2})
        time.sleep(0.6)
        return "done"

    return app


@pytest.fixture(params=BROKERS)
def app(request: pytest.FixtureRequest, tmp_path) -> Iterator[Celery]:  # type: ignore[no-untyped-def]
    application = make_app(store_url(request.param, tmp_path))
    yield application
    application.close()


def wait_for(predicate, timeout: float = 15) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def test_autoretry_with_backoff_then_success(app: Celery) -> None:
    """S5.4: autoretry_for, retry_backoff; RETRY recorded with the exception between attempts."""
    key = f"flaky-{os.urandom(4).hex()}"
    with running(app, "threads"):
        result = app.tasks["s.flaky"].delay(key, 2)
        assert result.get(timeout=20) == 3
    history = result.scoreboard["history"]
    assert [h["state"] for h in history] == ["STARTED", "RETRY", "STARTED", "RETRY", "STARTED", "SUCCESS"]
    assert result.scoreboard["retries"] == 2
    gaps = [b - a for a, b in zip(CALLS[key], CALLS[key][1:])]
    # Exponential: 0.2 s, then 0.4 s. A delay is never cut short, but may end late (RabbitMQ's by up
    # to ~0.2 s on a loaded machine), so each wait is checked against its own floor, not the other.
    assert gaps[0] >= 0.19 and gaps[1] >= 0.39, gaps


def test_retries_exhausted_reraise_the_exception_or_max_retries_exceeded(app: Celery) -> None:
    key = f"flaky-{os.urandom(4).hex()}"
    with running(app, "threads"):
        exhausted = app.tasks["s.flaky"].delay(key, 10)
        with pytest.raises(ValueError, match="failure 4"):
            exhausted.get(timeout=20)
        gave_up = app.tasks["s.give_up"].delay()
        with pytest.raises(MaxRetriesExceededError):
            gave_up.get(timeout=20)
        not_retried = app.tasks["s.never_retry"].delay()
        with pytest.raises(KeyError):
            not_retried.get(timeout=20)
    assert [h["state"] for h in not_retried.scoreboard["history"]] == ["STARTED", "FAILURE"]


def test_request_context(app: Celery) -> None:
    with running(app, "threads"):
        result = app.tasks["s.request"].apply_async((1, 2), {"k": 3}, queue="celery", headers={"trace": "t1"})
        info = result.get(timeout=20)
    assert info == {
        "id": result.id, "args": [1, 2], "kwargs": {"k": 3}, "retries": 0, "hostname": "w1@test",
        "queue": "celery", "root_id": result.id, "parent_id": None, "is_eager": False, "headers": {"trace": "t1"},
    }  # fmt: skip


@pytest.mark.parametrize("pool", ["threads", "solo", "prefork"])
def test_soft_time_limit_is_catchable(app: Celery, pool: str) -> None:
    with running(app, pool):
        assert app.tasks["s.soft"].apply_async(soft_time_limit=0.3).get(timeout=20) == "caught"


def test_dead_process_with_acks_late_is_redelivered_then_dead_lettered(app: Celery) -> None:
    """acks_late + reject_on_worker_lost: at most task_max_redeliveries more runs, then FAILURE."""
    app.conf.task_reject_on_worker_lost = True
    app.conf.task_max_redeliveries = 2
    with running(app, "prefork", concurrency=1):
        result = app.tasks["s.die"].delay()
        with pytest.raises(WorkerLostError, match="delivered 4 times"):
            result.get(timeout=30)
        assert app.tasks["s.noop"].delay(1).get(timeout=10) == 1
    assert [h["state"] for h in result.scoreboard["history"]].count("STARTED") == 3
    assert "task_max_redeliveries=2" in app.broker.dead_letters()[0].reason


def test_dead_process_without_reject_fails_at_once(app: Celery) -> None:
    with running(app, "prefork", concurrency=1), pytest.raises(WorkerLostError, match="exited with exit code 1"):
        app.tasks["s.die"].delay().get(timeout=20)


def test_failed_acks_late_task_is_dead_lettered_when_not_acked_on_failure(app: Celery) -> None:
    app.conf.task_acks_late = True
    app.conf.task_acks_on_failure_or_timeout = False
    with running(app, "threads"):
        with pytest.raises(RuntimeError):
            app.tasks["s.fail"].delay().get(timeout=20)
        wait_for(lambda: bool(app.broker.dead_letters()))
    assert "task failed" in app.broker.dead_letters()[0].reason


def test_max_memory_per_child_recycles_without_loss(app: Celery) -> None:
    app.conf.worker_max_memory_per_child = 1  # KiB: every child retires after its task
    with running(app, "prefork", concurrency=1):
        results = [app.tasks["s.pid"].delay(i) for i in range(4)]
        outcomes = [r.get(timeout=20) for r in results]
    assert [i for i, _ in outcomes] == [0, 1, 2, 3]  # nothing lost
    assert len({pid for _, pid in outcomes}) == 4  # a fresh child for every task


def test_rate_limit_is_global_across_workers(app: Celery) -> None:
    """Two workers with '10/s' run 10 tasks a second in total, not 20."""
    app.conf.task_annotations = {"s.limited": {"rate_limit": "10/s"}}
    second = Worker(app, pool="threads", concurrency=2, hostname="w2@test")
    thread = threading.Thread(target=second.run, daemon=True)
    thread.start()
    try:
        with running(app, "threads"):
            results = [app.tasks["s.limited"].delay(i) for i in range(25)]
            times = sorted(r.get(timeout=30) for r in results)
    finally:
        second.stop()
        thread.join(20)
    rate = (len(times) - 1) / (times[-1] - times[0])
    assert 8 <= rate <= 12, rate
    workers = {r.scoreboard["worker"] for r in results}
    assert workers == {"w1@test", "w2@test"}


def test_rate_limit_set_at_run_time_reaches_running_workers(app: Celery) -> None:
    """S8 (rate-limit action), Celery's control.rate_limit: a limit set while a worker runs applies
    within a second, kept by the broker; cleared, the task's configured limit applies again."""

    def span(n: int) -> float:
        times = sorted(r.get(timeout=30) for r in [app.tasks["s.limited"].delay(i) for i in range(n)])
        return times[-1] - times[0]

    with pytest.raises(ImproperlyConfigured, match="s.limited"):
        app.control.rate_limit("s.limited", "fast")
    app.state.kv_swap("rate_limits", "s.noop", None, b"fast")  # not through control: ignored, logged
    with running(app, "threads"):
        assert span(5) < 1.0  # configured: 10/s
        assert app.tasks["s.noop"].delay(1).get(timeout=10) == 1
        app.state.kv_swap("rate_limits", "s.noop", b"fast", None)
        app.control.rate_limit("s.limited", "2/s")
        assert app.control.rate_limits() == {"s.limited": "2/s"}
        time.sleep(1.2)
        assert span(5) >= 1.5  # four gaps of half a second
        app.control.rate_limit("s.limited", 0)  # no limit at all
        time.sleep(1.2)
        assert span(12) < 0.9  # 10/s would need 1.1 s
        app.control.rate_limit("s.limited", None)
        assert app.control.rate_limits() == {}
        time.sleep(1.2)
        assert span(12) >= 0.9


def test_rate_limited_tasks_hold_no_slot(app: Celery) -> None:
    app.tasks["s.limited"].rate_limit = "2/s"
    with running(app, "threads", concurrency=1):
        limited = [app.tasks["s.limited"].delay(i) for i in range(4)]
        started = time.monotonic()
        quick = [app.tasks["s.noop"].delay(i) for i in range(5)]
        assert [r.get(timeout=10) for r in quick] == [0, 1, 2, 3, 4]
        assert time.monotonic() - started < 1.0
        for result in limited:
            result.get(timeout=20)


def test_disabled_rate_limits(app: Celery) -> None:
    app.conf.worker_disable_rate_limits = True
    app.tasks["s.limited"].rate_limit = "1/m"
    with running(app, "threads"):
        results = [app.tasks["s.limited"].delay(i) for i in range(3)]
        for result in results:
            result.get(timeout=10)


def test_revoked_before_any_worker_never_runs(app: Celery) -> None:
    """Revocations are kept by the broker: a worker started later honours them."""
    result = app.tasks["s.record"].delay("revoked")
    result.revoke()
    assert result.state == states.REVOKED
    with pytest.raises(TaskRevokedError):
        result.get(timeout=5)
    with running(app, "threads"):
        marker = app.tasks["s.noop"].delay(7)
        assert marker.get(timeout=10) == 7
        wait_for(lambda: any(h.get("worker") for h in result.scoreboard["history"]))
    assert ["revoked"] not in CALLS.get("record", [])
    assert app.broker.queue_sizes(["celery"]) == {"celery": 0}


@pytest.mark.parametrize("pool", ["threads", "solo", "prefork"])
def test_revoke_terminate_stops_a_running_task(app: Celery, pool: str) -> None:
    with running(app, pool, concurrency=1):
        result = app.tasks["s.slow_loop"].delay()
        wait_for(lambda: result.state == states.STARTED)
        started = time.monotonic()
        app.control.revoke(result.id, terminate=True, signal="SIGKILL" if pool == "prefork" else None)
        with pytest.raises(TaskRevokedError, match="terminated"):
            result.get(timeout=15)
        assert time.monotonic() - started < 10
        assert app.tasks["s.noop"].delay(3).get(timeout=10) == 3


def test_links_and_errbacks(app: Celery) -> None:
    """S5.3: link gets the result prepended unless immutable; errbacks get the id or (request, exc, tb)."""
    CALLS.pop("record", None)
    CALLS.pop("on_error", None)
    add, record = app.tasks["s.add"], app.tasks["s.record"]
    with running(app, "threads"):
        ok = add.apply_async((1, 2), link=[record.s("after"), record.si("immutable")])
        assert ok.get(timeout=10) == 3
        failed = app.tasks["s.fail"].apply_async(link_error=[record.s(), app.tasks["s.on_error"].s()])
        with pytest.raises(RuntimeError):
            failed.get(timeout=10)
        wait_for(lambda: len(CALLS.get("record", [])) == 3 and CALLS.get("on_error"))
    assert sorted(map(str, CALLS["record"])) == sorted(map(str, [[3, "after"], ["immutable"], [failed.id]]))
    assert CALLS["on_error"] == [(failed.id, "RuntimeError('boom')")]


def test_progress_state_is_visible(app: Celery) -> None:
    with running(app, "threads"):
        result = app.tasks["s.progress"].delay()
        wait_for(lambda: result.state == "PROGRESS")
        assert result.info == {"done": 1, "total": 2}
        assert "PROGRESS" in [h["state"] for h in result.scoreboard["history"]]
        assert result.get(timeout=10) == "done"


def test_routing_by_exchange_and_routing_key_reaches_the_bound_queue(app: Celery) -> None:
    from conveyor import Exchange, Queue

    app.conf.task_queues = [Queue("media", Exchange("media"), routing_key="media.images"), Queue("celery")]
    with running(app, "threads"):
        result = app.tasks["s.request"].apply_async(exchange="media", routing_key="media.images")
        assert result.get(timeout=10)["queue"] == "media"


def test_get_inside_a_task_is_refused(app: Celery) -> None:
    """As in Celery: a task blocking on another task's result can deadlock the worker."""

    @app.task(name="s.nested")
    def nested() -> int:
        return app.tasks["s.noop"].delay(1).get(timeout=5)  # type: ignore[no-any-return]

    with running(app, "threads"), pytest.raises(RuntimeError, match="Never call result.get\\(\\) within a task"):
        nested.delay().get(timeout=10)


def test_result_extended_and_errors_even_if_ignored(app: Celery) -> None:
    app.conf.result_extended = True
    app.conf.task_store_errors_even_if_ignored = True
    with running(app, "threads"):
        ok = app.tasks["s.add"].apply_async((1, 2))
        assert ok.get(timeout=10) == 3
        assert (ok.name, ok.args, ok.kwargs, ok.worker, ok.queue) == ("s.add", [1, 2], {}, "w1@test", "celery")
        failed = app.tasks["s.fail"].apply_async(ignore_result=True)
        wait_for(lambda: app.backend.read([failed.id]) != {})
        assert app.backend.get_meta(failed.id)["status"] == states.FAILURE
        ignored = app.tasks["s.noop"].apply_async((1,), ignore_result=True)
        app.tasks["s.add"].delay(0, 0).get(timeout=10)
        assert app.backend.read([ignored.id]) == {}
