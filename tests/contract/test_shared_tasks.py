"""`shared_task`: library tasks bound to whichever app is current, run by a real worker."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from conveyor import Celery
from tests.conftest import STORES, contract_app, store_url
from tests.contract.shared_lib import tasks as lib
from tests.contract.test_worker_contract import running


@pytest.fixture(params=STORES)
def app(request: pytest.FixtureRequest, tmp_path) -> Iterator[Celery]:  # type: ignore[no-untyped-def]
    application = contract_app("shared", store_url(request.param, tmp_path))  # created after the tasks
    yield application
    application.close()


def test_a_shared_task_defined_before_the_app_runs_on_its_worker(app: Celery) -> None:
    assert "tests.contract.shared_lib.tasks.multiply" in app.tasks
    assert lib.multiply.name == "tests.contract.shared_lib.tasks.multiply"
    with running(app, "threads"):
        assert lib.multiply.delay(6, 7).get(timeout=10) == 42
        assert lib.multiply.apply_async((2, 3)).get(timeout=10) == 6
        assert lib.multiply.s(3, 3).apply_async().get(timeout=10) == 9
    assert lib.multiply(4, 5) == 20  # a direct call runs here


def test_a_bound_shared_task_keeps_its_options(app: Celery) -> None:
    task = app.tasks["lib.retrying"]
    assert task.max_retries == 3
    with running(app, "threads"):
        assert lib.retrying.delay(2).get(timeout=10) == 2


def test_a_shared_task_defined_after_the_app_is_registered_with_it(app: Celery) -> None:
    from conveyor import shared_task

    @shared_task(name="late.add")
    def add(x: int, y: int) -> int:
        return x + y

    assert "late.add" in app.tasks
    with running(app, "threads"):
        assert add.delay(1, 2).get(timeout=10) == 3


def test_a_shared_task_sends_to_the_current_app(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = contract_app("first", store_url("sqlite", tmp_path / "a"))
    second = contract_app("second", store_url("sqlite", tmp_path / "b"))
    try:
        result = lib.multiply.delay(2, 2)
        assert result.app is second
        assert second.broker.queue_sizes().get("celery") == 1 and not first.broker.queue_sizes().get("celery")
    finally:
        first.close()
        second.close()
