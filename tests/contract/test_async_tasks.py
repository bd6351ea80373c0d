"""`async def` tasks beside sync ones ("Beyond Celery"), on every pool and embedded store,
and the asyncio pool (`-P asyncio`) that interleaves them on one event loop."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from conveyor import Celery, states
from conveyor.exceptions import SoftTimeLimitExceeded, TaskRevokedError, TimeLimitExceeded
from tests.conftest import BROKERS, contract_app, store_url
from tests.contract.test_worker_contract import running
from tests.processes import wait_for_state

POOLS = ["asyncio", "threads", "solo", "prefork"]
#: Async tasks of the running test that have started and not finished (shared with the worker thread).
IN_FLIGHT = {"now": 0, "most": 0}
_in_flight_lock = threading.Lock()
ATTEMPTS: dict[str, int] = {}


def make_app(store: tuple[str, dict[str, str]]) -> Celery:
    app = contract_app("async_tests", store)

    @app.task(name="a.add")
    async def add(x: int, y: int) -> int:
        await asyncio.sleep(0.01)
        return x + y

    @app.task(name="a.sync_add")
    def sync_add(x: int, y: int) -> int:
        return x + y

    @app.task(name="a.fail")
    async def fail() -> None:
        await asyncio.sleep(0)
        raise ValueError("async boom")

    @app.task(name="a.request", bind=True)
    async def request(self, pause: float) -> dict[str, Any]:  # type: ignore[no-untyped-def]
        before = self.request.id
        await asyncio.sleep(pause)  # other tasks run meanwhile: each keeps its own request
        return {"before": before, "after": self.request.id, "retries": self.request.retries}

    @app.task(name="a.gather")
    async def gather(expected: int) -> int:
        """Waits until `expected` of these run at once: only a pool that interleaves gets there."""
        with _in_flight_lock:
            IN_FLIGHT["now"] += 1
            IN_FLIGHT["most"] = max(IN_FLIGHT["most"], IN_FLIGHT["now"])
        try:
            deadline = time.monotonic() + 10
            while IN_FLIGHT["most"] < expected and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            return IN_FLIGHT["most"]
        finally:
            with _in_flight_lock:
                IN_FLIGHT["now"] -= 1

    @app.task(name="a.sleep")
    async def sleep(seconds: float) -> str:
        await asyncio.sleep(seconds)
        return "slept"

    @app.task(name="a.cleanup")
    async def cleanup(seconds: float) -> str:
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            return "cleaned up"
        return "not interrupted"

    @app.task(name="a.flaky", autoretry_for=(ConnectionError,), default_retry_delay=0.05, max_retries=3)
    async def flaky(key: str, failures: int) -> int:
        ATTEMPTS[key] = ATTEMPTS.get(key, 0) + 1
        await asyncio.sleep(0)
        if ATTEMPTS[key] <= failures:
            raise ConnectionError(f"attempt {ATTEMPTS[key]}")
        return ATTEMPTS[key]

    @app.task(name="a.progress", bind=True)
    async def progress(self) -> int:  # type: ignore[no-untyped-def]
        for done in range(1, 4):
            self.update_state(state="PROGRESS", meta={"done": done})
            await asyncio.sleep(0)
        return 3

    return app


@pytest.fixture(params=BROKERS)
def app(request: pytest.FixtureRequest, tmp_path) -> Iterator[Celery]:  # type: ignore[no-untyped-def]
    application = make_app(store_url(request.param, tmp_path))
    IN_FLIGHT.update(now=0, most=0)
    yield application
    application.close()


@pytest.mark.parametrize("pool", POOLS)
def test_async_and_sync_tasks_run_side_by_side(app: Celery, pool: str) -> None:
    """Beyond Celery: `async def` tasks run natively beside sync tasks, on every pool."""
    with running(app, pool):
        results = [app.tasks["a.add"].delay(i, 1) for i in range(5)] + [app.tasks["a.sync_add"].delay(2, 2)]
        assert [r.get(timeout=15) for r in results] == [1, 2, 3, 4, 5, 4]
        failed = app.tasks["a.fail"].delay()
        with pytest.raises(ValueError, match="async boom"):
            failed.get(timeout=15)
        assert [h["state"] for h in failed.scoreboard["history"]] == [states.STARTED, states.FAILURE]


def test_the_asyncio_pool_interleaves_async_tasks(app: Celery) -> None:
    with running(app, "asyncio", concurrency=10):
        results = [app.tasks["a.gather"].delay(10) for _ in range(10)]
        assert [r.get(timeout=20) for r in results] == [10] * 10


def test_each_async_task_keeps_its_own_request(app: Celery) -> None:
    with running(app, "asyncio", concurrency=10):
        results = [app.tasks["a.request"].delay(0.2) for _ in range(5)]
        for result in results:
            assert result.get(timeout=15) == {"before": result.id, "after": result.id, "retries": 0}


def test_async_update_state_goes_through_the_worker_in_order(app: Celery) -> None:
    with running(app, "asyncio"):
        result = app.tasks["a.progress"].delay()
        assert result.get(timeout=15) == 3
        states_seen = [h["state"] for h in result.scoreboard["history"]]
        assert states_seen == [states.STARTED, "PROGRESS", "PROGRESS", "PROGRESS", states.SUCCESS]


def test_async_time_limits(app: Celery) -> None:
    """Hard: cancelled, FAILURE TimeLimitExceeded. Soft: cancelled; caught, it may still return."""
    with running(app, "asyncio"):
        hard = app.tasks["a.sleep"].apply_async((30,), time_limit=0.3)
        soft = app.tasks["a.sleep"].apply_async((30,), soft_time_limit=0.3)
        caught = app.tasks["a.cleanup"].apply_async((30,), soft_time_limit=0.3)
        with pytest.raises(TimeLimitExceeded):
            hard.get(timeout=15)
        with pytest.raises(SoftTimeLimitExceeded):
            soft.get(timeout=15)
        assert caught.get(timeout=15) == "cleaned up"


def test_revoke_with_terminate_cancels_a_running_async_task(app: Celery) -> None:
    with running(app, "asyncio"):
        result = app.tasks["a.sleep"].delay(30)
        wait_for_state(result, states.STARTED)
        result.revoke(terminate=True)
        with pytest.raises(TaskRevokedError):
            result.get(timeout=15)
        assert result.state == states.REVOKED


@pytest.mark.parametrize("pool", ["asyncio", "threads"])
def test_async_autoretry_records_retries_then_succeeds(app: Celery, pool: str) -> None:
    with running(app, pool):
        result = app.tasks["a.flaky"].delay(f"{pool}-{id(app)}", 2)
        assert result.get(timeout=20) == 3
        history = [h["state"] for h in result.scoreboard["history"]]
        assert history.count(states.RETRY) == 2 and history[-1] == states.SUCCESS


def test_eager_apply_runs_an_async_task(app: Celery) -> None:
    assert app.tasks["a.add"].apply((2, 3)).get() == 5


def test_calling_an_async_task_directly_gives_its_coroutine(app: Celery) -> None:
    assert asyncio.run(app.tasks["a.add"](4, 5)) == 9
