"""Signals (Celery's hooks): receivers in order, failures contained, publish and eager runs send them."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

from conveyor import Celery, messages, signals
from conveyor.signals import Signal


@pytest.fixture
def app() -> Iterator[Celery]:
    application = Celery("sig", broker="memory://signals", result_backend="memory://signals")

    @application.task(name="sig.add")
    def add(x: int, y: int) -> int:
        return x + y

    @application.task(name="sig.fail")
    def fail() -> None:
        raise KeyError("missing")

    yield application
    application.close()


@pytest.fixture
def received() -> Iterator[list[tuple[str, dict[str, Any]]]]:
    """Every task and publish signal sent during the test, by name."""
    log: list[tuple[str, dict[str, Any]]] = []
    hooked = [signals.before_task_publish, signals.after_task_publish, signals.task_prerun, signals.task_postrun,
              signals.task_success, signals.task_failure, signals.task_retry]  # fmt: skip

    def record(sender: Any, signal: Signal, **kwargs: Any) -> None:
        log.append((signal.name, {"sender": sender, **kwargs}))

    for signal in hooked:
        signal.connect(record)
    yield log
    for signal in hooked:
        signal.disconnect(record)


def test_receivers_run_in_order_and_a_failing_one_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    signal, calls = Signal("demo"), []

    @signal.connect
    def first(sender: Any, **kwargs: Any) -> str:
        calls.append(("first", sender, kwargs["n"]))
        return "one"

    def broken(sender: Any, **kwargs: Any) -> None:
        raise RuntimeError("receiver bug")

    signal.connect(broken)
    signal.connect(first)  # connecting again keeps one
    with caplog.at_level(logging.ERROR, "conveyor.signals"):
        replies = signal.send("me", n=1)
    assert calls == [("first", "me", 1)]
    assert replies[0] == (first, "one") and isinstance(replies[1][1], RuntimeError)
    assert "Receiver" in caplog.text and "demo" in caplog.text
    signal.disconnect(broken)
    assert signal.send("me", n=2) == [(first, "one")]


def test_publish_signals_let_headers_travel_with_the_message(
    app: Celery, received: list[tuple[str, dict[str, Any]]]
) -> None:
    def add_header(sender: str, headers: dict[str, Any], **_: Any) -> None:
        headers["x-request-id"] = "req-7"

    signals.before_task_publish.connect(add_header)
    try:
        result = app.tasks["sig.add"].delay(1, 2)
    finally:
        signals.before_task_publish.disconnect(add_header)
    [delivery] = app.broker.fetch(["celery"], 1, 0)
    assert messages.decode(delivery.body, None).headers["x-request-id"] == "req-7"
    names = [name for name, _ in received]
    assert names == ["before_task_publish", "after_task_publish"]
    after = received[1][1]
    assert after["sender"] == "sig.add" and after["routing_key"] == "celery"
    assert after["headers"]["id"] == result.id and after["headers"]["x-request-id"] == "req-7"


def test_a_run_sends_prerun_outcome_then_postrun(app: Celery, received: list[tuple[str, dict[str, Any]]]) -> None:
    assert app.tasks["sig.add"].apply((2, 3)).get() == 5
    failed = app.tasks["sig.fail"].apply()
    assert failed.failed()
    names = [name for name, _ in received]
    assert names == ["task_prerun", "task_success", "task_postrun", "task_prerun", "task_failure", "task_postrun"]
    prerun, success, postrun, _, failure, failed_postrun = (kwargs for _, kwargs in received)
    assert prerun["task"].name == "sig.add" and prerun["args"] == (2, 3) and prerun["task_id"] == postrun["task_id"]
    assert success["result"] == 5 and postrun["retval"] == 5 and postrun["state"] == "SUCCESS"
    assert isinstance(failure["exception"], KeyError) and failure["traceback"] is not None
    assert failed_postrun["state"] == "FAILURE"
