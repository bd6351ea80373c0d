"""The rpc result backend (S1.4, "RabbitMQ (rpc style)"): states travel back to the caller as
RabbitMQ messages, through a real worker; only the caller sees them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from conveyor import Celery, chain, chord, group, states
from conveyor.exceptions import ImproperlyConfigured
from tests.conftest import store_url
from tests.contract.test_semantics import wait_for
from tests.contract.test_worker_contract import running


def make_app(url: str, options: dict[str, str]) -> Celery:
    app = Celery("rpc_tests", broker=url, result_backend="rpc://")
    app.conf.broker_transport_options = {"lease_timeout": 3, **options}

    @app.task(name="r.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="r.fail")
    def fail() -> None:
        raise KeyError("no such key")

    @app.task(name="r.progress", bind=True)
    def progress(self: Any) -> str:
        self.update_state(state="PROGRESS", meta={"done": 1})
        time.sleep(0.5)
        return "done"

    @app.task(name="r.flaky", bind=True, max_retries=2, default_retry_delay=0.1)
    def flaky(self: Any) -> int:
        if self.request.retries < 1:
            raise self.retry()
        return self.request.retries

    return app


@pytest.fixture
def store(tmp_path) -> tuple[str, dict[str, str]]:  # type: ignore[no-untyped-def]
    return store_url("amqp", tmp_path)


@pytest.fixture
def app(store: tuple[str, dict[str, str]]) -> Iterator[Celery]:
    application = make_app(*store)
    yield application
    application.close()


def test_results_come_back_to_the_caller(app: Celery) -> None:
    """S5.2 over rpc://: get() returns the value; a failure re-raises its type; STARTED, RETRY and
    custom states arrive too."""
    with running(app, "threads"):
        assert app.tasks["r.add"].delay(1, 2).get(timeout=20) == 3
        with pytest.raises(KeyError, match="no such key"):
            app.tasks["r.fail"].delay().get(timeout=20)
        progress = app.tasks["r.progress"].delay()
        wait_for(lambda: progress.state == "PROGRESS")
        assert progress.info == {"done": 1}
        assert progress.get(timeout=20) == "done" and progress.state == states.SUCCESS
        assert app.tasks["r.flaky"].delay().get(timeout=20) == 1


def test_a_chain_and_a_group_report_to_whoever_sent_them(app: Celery) -> None:
    add = app.tasks["r.add"]
    with running(app, "threads"):
        assert chain(add.s(1, 1), add.s(2), add.s(3)).apply_async().get(timeout=20) == 7
        assert group(add.s(i, i) for i in range(5)).apply_async().get(timeout=20) == [0, 2, 4, 6, 8]


def test_only_the_caller_sees_the_state_and_forget_drops_it(app: Celery, store: tuple[str, dict[str, str]]) -> None:
    other = make_app(*store)
    with running(app, "threads"):
        result = app.tasks["r.add"].delay(2, 2)
        assert result.get(timeout=20) == 4
        assert other.AsyncResult(result.id).state == states.PENDING  # another process's reply queue
        other_result = other.tasks["r.add"].delay(3, 3)
        assert other_result.get(timeout=20) == 6
        assert app.AsyncResult(other_result.id).state == states.PENDING
    result.forget()
    assert app.AsyncResult(result.id).state == states.PENDING
    other.close()


def test_chords_are_refused_with_the_reason(app: Celery) -> None:
    add = app.tasks["r.add"]
    with pytest.raises(ImproperlyConfigured, match="workers can read"):
        chord([add.s(1, 1)], add.s(0)).apply_async()


def test_rpc_needs_a_rabbitmq_broker(tmp_path) -> None:  # type: ignore[no-untyped-def]
    app = Celery("rpc_on_sqlite", broker=f"sqlite:///{tmp_path}/q.db", result_backend="rpc://")
    with pytest.raises(ImproperlyConfigured, match="needs an amqp:// broker"):
        app.backend  # noqa: B018
    app.close()
