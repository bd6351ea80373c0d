"""The worker over every pool and embedded store (S5-S7).

A real Worker runs in a background thread of the test process, consuming the
same broker the test publishes to.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from conveyor import Celery, states
from conveyor.brokers import Outgoing
from conveyor.exceptions import (
    ContentDisallowed,
    EncodeError,
    NotRegistered,
    TaskRevokedError,
    TimeLimitExceeded,
    TimeoutError,
)
from conveyor.worker import Worker
from conveyor.worker.pools import ThreadPool
from tests.conftest import BROKERS, contract_app, store_url
from tests.processes import wait_for_state

POOLS = ["threads", "solo", "prefork", "asyncio"]


class CustomError(Exception):
    pass


def make_app(store: tuple[str, dict[str, str]]) -> Celery:
    app = contract_app("wtests", store)

    @app.task(name="t.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="t.fail")
    def fail(message: str) -> None:
        raise CustomError(message)

    @app.task(name="t.sleep")
    def sleep(seconds: float) -> int:
        time.sleep(seconds)
        return os.getpid()

    @app.task(name="t.unserializable")
    def unserializable() -> object:
        return object()

    @app.task(name="t.flaky", bind=True, default_retry_delay=0.1, max_retries=2)
    def flaky(self, succeed_on: int) -> int:  # type: ignore[no-untyped-def]
        if self.request.retries < succeed_on:
            raise self.retry(exc=ValueError(f"attempt {self.request.retries}"))
        return self.request.retries  # type: ignore[no-any-return]

    @app.task(name="t.pid")
    def pid() -> int:
        return os.getpid()

    @app.task(name="t.thread")
    def thread() -> str:
        return threading.current_thread().name

    return app


@contextlib.contextmanager
def running(app: Celery, pool: str, hostname: str = "w1@test", **options: object) -> Iterator[Worker]:
    """A worker of `app` on a thread for the block (stopped, warm, at its end)."""
    worker = Worker(app, pool=pool, concurrency=options.pop("concurrency", 2), hostname=hostname, **options)  # type: ignore[arg-type]
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    assert worker.ready.wait(10), "worker did not start"
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(30)
        assert not thread.is_alive(), f"worker did not stop; its threads:\n{thread_stacks()}"


def thread_stacks() -> str:
    """Where every thread of this process is (a worker that does not stop shows where it hangs)."""
    names = {t.ident: t.name for t in threading.enumerate()}
    return "\n".join(
        f"--- {names.get(ident, ident)}\n" + "".join(traceback.format_stack(frame))
        for ident, frame in sys._current_frames().items()
    )


@pytest.fixture(params=BROKERS)
def app(request: pytest.FixtureRequest, tmp_path) -> Iterator[Celery]:  # type: ignore[no-untyped-def]
    application = make_app(store_url(request.param, tmp_path))
    yield application
    application.close()


@pytest.mark.parametrize("pool", POOLS)
def test_success_failure_and_scoreboard(app: Celery, pool: str) -> None:
    """S5.2, S6: get() returns the value; a failure re-raises the same type; the scoreboard tells the story."""
    with running(app, pool):
        result = app.tasks["t.add"].delay(1, 2)
        assert result.get(timeout=10) == 3
        assert result.successful() and result.ready() and not result.failed()
        board = result.scoreboard
        assert [h["state"] for h in board["history"]] == [states.STARTED, states.SUCCESS]
        assert board["worker"] == "w1@test" and board["runtime"] is not None and board["retries"] == 0
        assert result.date_done is not None

        failed = app.tasks["t.fail"].delay("boom")
        with pytest.raises(CustomError, match="boom"):
            failed.get(timeout=10)
        assert failed.failed() and failed.state == states.FAILURE
        assert isinstance(failed.get(propagate=False), CustomError)
        assert "CustomError: boom" in (failed.traceback or "")


@pytest.mark.parametrize("pool", POOLS)
def test_bad_input_ends_failure_and_the_worker_goes_on(app: Celery, pool: str) -> None:
    """Unknown task, arguments that do not fit, unserializable result: FAILURE naming the problem."""
    with running(app, pool):
        unknown = app.send_task("t.nope", (1,))
        with pytest.raises(NotRegistered, match="'t.nope' is not registered"):
            unknown.get(timeout=10)
        misfit = app.send_task("t.add", (1,))
        with pytest.raises(TypeError, match="y"):
            misfit.get(timeout=10)
        bad_result = app.tasks["t.unserializable"].delay()
        with pytest.raises(EncodeError, match="cannot be serialized with json"):
            bad_result.get(timeout=10)
        assert app.tasks["t.add"].delay(2, 2).get(timeout=10) == 4


def test_undecodable_message_goes_to_dead_letters(app: Celery) -> None:
    with running(app, "threads"):
        app.broker.publish([Outgoing("celery", b"\x00 this is not a message")])
        deadline = time.monotonic() + 10
        while not app.broker.dead_letters() and time.monotonic() < deadline:
            time.sleep(0.05)
        [letter] = app.broker.dead_letters()
        assert "undecodable message" in letter.reason and letter.body.startswith(b"\x00")
        assert app.tasks["t.add"].delay(1, 1).get(timeout=10) == 2


def test_refused_serializer_ends_failure_naming_the_content_type(app: Celery) -> None:
    """accept_content is enforced by the worker: pickle is refused unless listed."""
    with running(app, "threads"):
        result = app.tasks["t.add"].apply_async((1, 2), serializer="pickle")
        with pytest.raises(ContentDisallowed, match="application/x-python-serialize"):
            result.get(timeout=10)
        assert app.tasks["t.add"].delay(1, 1).get(timeout=10) == 2


def test_accepted_pickle_runs(app: Celery) -> None:
    app.conf.accept_content = ["json", "pickle"]
    with running(app, "threads"):
        assert app.tasks["t.add"].apply_async((1, 2), serializer="pickle").get(timeout=10) == 3


def test_expired_task_is_not_run_and_ends_revoked(app: Celery) -> None:
    result = app.tasks["t.add"].apply_async((1, 2), expires=datetime.now(UTC) - timedelta(seconds=1))
    with running(app, "threads"):
        with pytest.raises(TaskRevokedError, match="expired"):
            result.get(timeout=10)
        assert result.state == states.REVOKED
        assert [h["state"] for h in result.scoreboard["history"]] == [states.REVOKED]


def test_countdown_is_held_by_the_broker(app: Celery) -> None:
    """S2.3: the task waits in the broker and runs when due."""
    with running(app, "threads"):
        sent = time.monotonic()
        result = app.tasks["t.add"].apply_async((1, 2), countdown=1.0)
        time.sleep(0.3)
        assert result.state == states.PENDING
        assert result.get(timeout=10) == 3
        assert time.monotonic() - sent >= 0.9


def test_retry_records_retry_then_success(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """S5.4: self.retry() ends the attempt with RETRY; the next one succeeds."""
    app = make_app(store_url("sqlite", tmp_path))
    with running(app, "threads"):
        result = app.tasks["t.flaky"].delay(1)
        assert result.get(timeout=10) == 1
        history = [h["state"] for h in result.scoreboard["history"]]
        assert history == [states.STARTED, states.RETRY, states.STARTED, states.SUCCESS]
        assert result.scoreboard["retries"] == 1
    app.close()


def test_ignore_result_stores_nothing(app: Celery) -> None:
    with running(app, "threads"):
        ignored = app.tasks["t.add"].apply_async((1, 2), ignore_result=True)
        assert ignored.get() is None
        marker = app.tasks["t.add"].delay(0, 0)
        marker.get(timeout=10)
        assert app.backend.read([ignored.id]) == {}


def test_get_times_out_with_conveyors_timeout_error(app: Celery) -> None:
    result = app.tasks["t.add"].delay(1, 2)  # no worker running
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        result.get(timeout=0.5)
    assert time.monotonic() - started < 5
    with pytest.raises(builtins_timeout()):
        result.get(timeout=0.1)


def builtins_timeout() -> type[BaseException]:
    import builtins

    return builtins.TimeoutError


def test_forget_and_result_expires(app: Celery) -> None:
    app.backend.expires = 1.0
    with running(app, "threads"):
        first = app.tasks["t.add"].delay(1, 2)
        assert first.get(timeout=10) == 3
        first.forget()
        assert app.AsyncResult(first.id).state == states.PENDING
        second = app.tasks["t.add"].delay(2, 2)
        assert second.get(timeout=10) == 4
        time.sleep(1.2)
        assert app.AsyncResult(second.id).state == states.PENDING


def test_acks_late_keeps_the_message_until_done(app: Celery) -> None:
    app.conf.task_acks_late = True
    with running(app, "threads"):
        result = app.tasks["t.sleep"].delay(0.8)
        wait_for_state(result, states.STARTED)
        assert app.broker.queue_sizes(["celery"]) == {"celery": 1}
        result.get(timeout=10)
        time.sleep(0.1)
        assert app.broker.queue_sizes(["celery"]) == {"celery": 0}


def test_early_ack_removes_the_message_when_started(app: Celery) -> None:
    with running(app, "threads"):
        result = app.tasks["t.sleep"].delay(0.8)
        wait_for_state(result, states.STARTED)
        time.sleep(0.1)
        assert app.broker.queue_sizes(["celery"]) == {"celery": 0}
        result.get(timeout=10)


@pytest.mark.parametrize("pool", ["solo", "prefork"])
def test_warm_shutdown_finishes_running_and_returns_prefetched(app: Celery, pool: str) -> None:
    """S7: a warm stop lets running tasks finish; prefetched ones go back to the queue."""
    with running(app, pool, concurrency=1):
        running_task = app.tasks["t.sleep"].delay(1.0)
        waiting = [app.tasks["t.add"].delay(i, i) for i in range(3)]
        wait_for_state(running_task, states.STARTED)
    assert running_task.state == states.SUCCESS
    assert all(r.state == states.PENDING for r in waiting)
    assert app.broker.queue_sizes(["celery"]) == {"celery": 3}


@pytest.mark.parametrize("pool", ["threads", "solo"])
def test_limits_due_as_tasks_end_never_reach_the_worker(app: Celery, pool: str) -> None:
    """A soft limit due just as its task returns is dropped: raised after it, in the pool's own
    code, it would end the pool's thread and the worker would run nothing more."""
    with running(app, pool, concurrency=1):
        results = [app.tasks["t.sleep"].apply_async((0.002,), soft_time_limit=0.002) for _ in range(200)]
        for result in results:
            result.get(timeout=30, propagate=False)
        assert {result.state for result in results} <= {states.SUCCESS, states.FAILURE}
        assert app.tasks["t.add"].delay(1, 2).get(timeout=10) == 3


def test_prefork_hard_time_limit_kills_and_replaces_the_process(app: Celery) -> None:
    with running(app, "prefork", concurrency=1):
        slow = app.tasks["t.sleep"].apply_async((30,), time_limit=0.5)
        with pytest.raises(TimeLimitExceeded, match="time limit of 0.5s"):
            slow.get(timeout=15)
        assert app.tasks["t.add"].delay(1, 2).get(timeout=10) == 3


def test_prefork_max_tasks_per_child_recycles_without_loss(app: Celery) -> None:
    app.conf.worker_max_tasks_per_child = 1
    with running(app, "prefork", concurrency=1):
        results = [app.tasks["t.pid"].delay() for _ in range(4)]
        pids = [r.get(timeout=15) for r in results]
    assert len(set(pids)) == 4


def test_threads_pool_runs_tasks_concurrently(app: Celery) -> None:
    with running(app, "threads", concurrency=4):
        started = time.monotonic()
        results = [app.tasks["t.sleep"].delay(0.5) for _ in range(4)]
        for result in results:
            result.get(timeout=10)
        assert time.monotonic() - started < 1.9


@pytest.mark.parametrize("pool", ["threads", "solo"])
def test_an_idle_worker_runs_a_task_without_waking_its_loop(
    app: Celery, pool: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Latency: on an idle worker the fetcher's thread takes the delivery to the
    pool and the pool's thread writes the result: the loop's thread is not woken between.
    Solo runs the task on the fetcher's thread itself, as Celery's solo pool does."""
    threads: dict[str, list[str]] = {"receive": [], "write": []}
    receive, write = Worker._receive, app.backend.write

    def received(worker: Worker, deliveries):  # type: ignore[no-untyped-def]
        threads["receive"].append(threading.current_thread().name)
        receive(worker, deliveries)

    def written(updates):  # type: ignore[no-untyped-def]
        threads["write"].append(threading.current_thread().name)
        write(updates)

    monkeypatch.setattr(Worker, "_receive", received)
    app.backend.write = written  # type: ignore[method-assign]
    with running(app, pool, concurrency=1):
        for n in range(8):
            if n == 3:  # warmed up: the threads have their connections
                threads["receive"].clear()
                threads["write"].clear()
            assert app.tasks["t.add"].delay(n, 1).get(timeout=10) == n + 1
    # Nearly always all five: the caller, woken by the write, runs in this process, and its
    # next task may reach the fetcher before the pool thread has let go.
    assert sum(name == "conveyor-fetcher" for name in threads["receive"]) >= 3, threads
    runner = "conveyor-fetcher" if pool == "solo" else "conveyor-pool-0"
    assert sum(name == runner for name in threads["write"]) >= 4, threads


def test_a_failure_handling_an_event_off_the_loop_stops_the_worker(
    app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug met while the fetcher's thread handles an idle worker's delivery does not just end
    that thread (a worker alive that fetches nothing): the loop raises it and the worker stops."""

    def broken(worker: Worker, deliveries):  # type: ignore[no-untyped-def]
        raise RuntimeError("a bug")

    monkeypatch.setattr(Worker, "_receive", broken)
    worker = Worker(app, pool="threads", concurrency=1, hostname="w1@test")
    errors: list[BaseException] = []

    def run() -> None:
        try:
            worker.run()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert worker.ready.wait(10)
    app.tasks["t.add"].delay(1, 2)
    thread.join(20)
    assert not thread.is_alive() and [str(e) for e in errors] == ["a bug"]


def test_solo_runs_one_task_at_a_time_however_they_arrive(app: Celery) -> None:
    """S7 solo: single tasks to an idle worker (run on the fetcher's thread) and bursts
    (queued for the pool's) never overlap."""
    running_now, overlaps = 0, 0
    guard = threading.Lock()

    @app.task(name="t.exclusive")
    def exclusive(seconds: float) -> None:
        nonlocal running_now, overlaps
        with guard:
            running_now += 1
            overlaps += running_now > 1
        time.sleep(seconds)
        with guard:
            running_now -= 1

    with running(app, "solo"):
        results = []
        for round_ in range(12):
            burst = 1 if round_ % 3 else 4
            results += [exclusive.delay(0.002) for _ in range(burst)]
            time.sleep(0.01 * (round_ % 4))
        for result in results:
            result.get(timeout=20)
    assert overlaps == 0


def test_an_idle_thread_pool_keeps_using_its_warmest_thread(app: Celery) -> None:
    """Latency: one task after another on an idle worker runs on the thread that
    went idle last, not on each of the pool's threads in turn (cold connections and caches)."""
    names = []
    with running(app, "threads", concurrency=4) as worker:
        pool = worker.pool
        assert isinstance(pool, ThreadPool)
        for _ in range(8):
            # Each task comes once every thread is idle again (the last one's ack sent).
            deadline = time.monotonic() + 10
            while len(pool._idle) < 4 and time.monotonic() < deadline:
                time.sleep(0.005)
            names.append(app.tasks["t.thread"].delay().get(timeout=10))
    assert len(set(names)) == 1, names  # in turn, it would be all four


def test_reports_gather_under_load_into_fewer_writes(app: Celery) -> None:
    """Batching under load: a busy pool's results go out several per write, not one each."""
    writes = 0
    write = app.backend.write

    def counted(updates):  # type: ignore[no-untyped-def]
        nonlocal writes
        writes += 1
        write(updates)

    app.backend.write = counted  # type: ignore[method-assign]
    results = [app.tasks["t.sleep"].delay(0.001) for _ in range(400)]
    with running(app, "threads", concurrency=4, prefetch_multiplier=16):
        for result in results:
            result.get(timeout=30)
    assert writes < len(results) / 3, f"{writes} writes for {len(results)} tasks"


def test_queues_select_what_a_worker_consumes(app: Celery) -> None:
    """-Q: a worker consumes only its queues; a task routed elsewhere waits there, never lost."""
    with running(app, "threads", queues=["jobs"]):
        mine = app.tasks["t.add"].apply_async((1, 1), queue="jobs")
        other = app.tasks["t.add"].apply_async((2, 2), queue="elsewhere")
        assert mine.get(timeout=10) == 2
        time.sleep(0.3)
        assert other.state == states.PENDING
        assert app.broker.queue_sizes(["elsewhere"]) == {"elsewhere": 1}


def test_log_lines_have_celerys_shape_with_the_shadow_name(app: Celery, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="conveyor.worker")
    with running(app, "threads"):
        result = app.tasks["t.add"].apply_async((1, 2), shadow="adder")
        result.get(timeout=10)
        deadline = time.monotonic() + 5
        while "succeeded" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.02)
    assert f"Task adder[{result.id}] received" in caplog.text
    assert f"Task adder[{result.id}] succeeded in " in caplog.text and "s: 3" in caplog.text
    assert result.scoreboard["shadow"] == "adder"


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_a_short_tasks_history_is_in_the_order_things_happened(app: Celery, pool: str) -> None:
    """A prefork child's STARTED may reach the worker after the task finished: its time is the
    child's, so history and date_done follow what happened."""
    with running(app, pool):
        results = [app.tasks["t.add"].delay(i, i) for i in range(20)]
        assert [r.get(timeout=20) for r in results] == [2 * i for i in range(20)]
    for result in results:
        history = result.scoreboard["history"]
        assert [h["state"] for h in history] == [states.STARTED, states.SUCCESS], history
        started, succeeded = (h["timestamp"] for h in history)
        assert started <= succeeded
        assert result.date_done is not None and result.date_done.timestamp() >= started


@pytest.mark.parametrize("pool", ["threads", "prefork"])
def test_a_feature_plugs_in_as_a_hook_and_sees_each_step_of_a_task(app: Celery, pool: str) -> None:
    """A hook added to the worker's features is told of a task's arrival, start, end and stored
    result, in that order, without the worker knowing what the hook does."""
    from conveyor.worker.features import features
    from conveyor.worker.hooks import Held, Hook

    steps: list[str] = []
    stored = threading.Event()

    class Recorder(Hook):
        def admit(self, arrivals: list[Held]) -> list[Held]:
            steps.extend("admit" for _ in arrivals)
            return arrivals

        def received(self, held: Held) -> None:
            steps.append("received")

        def started(self, held: Held, pid: int) -> None:
            steps.append("started")

        def finished(self, held: Held, outcome) -> None:  # type: ignore[no-untyped-def]
            steps.append(f"finished {outcome.state}")

        def stored(self, updates) -> None:  # type: ignore[no-untyped-def]
            if any(u.state == "SUCCESS" for u in updates):
                steps.append("stored")
                stored.set()

    with running(app, pool, hooks=[*features(app), Recorder()]):
        assert app.tasks["t.add"].delay(2, 3).get(timeout=10) == 5
        assert stored.wait(5)
    assert steps == ["admit", "received", "started", "finished SUCCESS", "stored"]
