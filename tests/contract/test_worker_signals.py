"""Celery's worker signals, with Celery's arguments, sent by a real worker."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor import Celery, signals
from conveyor.brokers.base import Outgoing
from conveyor.exceptions import DecodeError, Reject
from conveyor.messages import Message
from conveyor.serialization import Serializer, register_serializer
from tests.conftest import contract_app, store_url
from tests.contract.test_worker_contract import running

NAMES = [
    "celeryd_init", "worker_init", "import_modules", "heartbeat_sent", "task_received", "task_revoked",
    "task_unknown", "task_rejected", "worker_shutting_down",
]  # fmt: skip


@pytest.fixture
def seen() -> Iterator[dict[str, list[dict[str, Any]]]]:
    received: dict[str, list[dict[str, Any]]] = {name: [] for name in NAMES}
    receivers = []
    for name in NAMES:

        def receiver(sender: Any, _signal_name: str = name, **kwargs: Any) -> None:
            received[_signal_name].append({"sender": sender, **kwargs})

        getattr(signals, name).connect(receiver)
        receivers.append((name, receiver))
    yield received
    for name, receiver in receivers:
        getattr(signals, name).disconnect(receiver)


def test_a_worker_sends_celerys_signals_with_celerys_arguments(
    tmp_path: Path, seen: dict[str, list[dict[str, Any]]]
) -> None:
    app: Celery = contract_app("signals", store_url("sqlite", tmp_path))

    @app.task(name="s.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="s.refuse", acks_late=True)
    def refuse() -> None:
        raise Reject("no thanks")

    try:
        with running(app, "threads") as worker:
            ok = add.delay(1, 2)
            assert ok.get(timeout=10) == 3
            doomed = add.apply_async((1, 1), countdown=1)
            doomed.revoke()
            app.broker.publish([Outgoing("celery", Message("s.missing", id="m1").encode())])
            refuse.delay()
            app.broker.publish([Outgoing("celery", b"\x00 not a message")])
            deadline = time.monotonic() + 10
            while not (seen["task_revoked"] and seen["task_unknown"] and seen["task_rejected"]):
                assert time.monotonic() < deadline, {k: len(v) for k, v in seen.items() if not v}
                time.sleep(0.05)
    finally:
        app.close()
    [init] = seen["celeryd_init"]
    assert init["sender"] == "w1@test" and init["instance"] is worker and init["conf"] is app.conf
    assert [s["sender"] for s in seen["worker_init"]] == [worker]
    assert seen["import_modules"][0]["sender"] is app
    assert seen["heartbeat_sent"] and seen["heartbeat_sent"][0]["sender"] is worker
    received = {s["request"].id: s for s in seen["task_received"]}
    assert received[ok.id]["sender"] is worker and received[ok.id]["request"].task == "s.add"
    [revoked] = seen["task_revoked"]
    assert revoked["request"].id == doomed.id and revoked["terminated"] is False and revoked["expired"] is False
    [unknown] = seen["task_unknown"]
    assert unknown["name"] == "s.missing" and unknown["id"] == "m1" and "not registered" in str(unknown["exc"])
    [rejected] = seen["task_rejected"]  # the unreadable message; a task raising Reject sends nothing, as in Celery
    assert rejected["message"].body == b"\x00 not a message" and isinstance(rejected["exc"], DecodeError)
    [stopping] = seen["worker_shutting_down"]
    assert stopping["sender"] == "w1@test" and stopping["how"] == "Warm" and stopping["exitcode"] == 0


def test_before_task_publish_gets_celerys_headers_and_body(tmp_path: Path) -> None:
    app: Celery = contract_app("publish", store_url("sqlite", tmp_path))
    seen: list[dict[str, Any]] = []

    @app.task(name="s.add")
    def add(x: int, y: int) -> int:
        return x + y

    def receiver(sender: Any, headers: dict[str, Any], body: Any, **kwargs: Any) -> None:
        seen.append({"sender": sender, "task": headers["task"], "id": headers["id"], "body": body})
        headers["tenant"] = "acme"  # travels with the message

    signals.before_task_publish.connect(receiver)
    try:
        result = add.apply_async((2, 3), headers={"custom": 1})
        [delivery] = app.broker.fetch(["celery"], 1, 1.0)
    finally:
        signals.before_task_publish.disconnect(receiver)
        app.close()
    [call] = seen
    assert call["sender"] == "s.add" and call["task"] == "s.add" and call["id"] == result.id
    args, kwargs, embed = call["body"]
    assert args == (2, 3) and kwargs == {} and set(embed) == {"callbacks", "errbacks", "chain", "chord"}
    from conveyor.messages import decode

    assert decode(delivery.body).headers == {"custom": 1, "tenant": "acme"}


def test_an_error_of_the_workers_own_after_the_task_sends_task_internal_error(tmp_path: Path) -> None:
    def refuse(value: Any) -> bytes:
        raise RuntimeError("this serializer encodes nothing")

    register_serializer(Serializer("refusing", "application/x-refusing", refuse, lambda data: data))
    app: Celery = contract_app("internal", store_url("sqlite", tmp_path))
    app.conf.result_serializer = "refusing"  # no result, not even the failure, can be stored
    errors: list[dict[str, Any]] = []

    def receiver(sender: Any, **kwargs: Any) -> None:
        errors.append({"sender": sender, **kwargs})

    @app.task(name="s.echo")
    def echo(x: int) -> int:
        return x

    signals.task_internal_error.connect(receiver)
    try:
        with running(app, "threads"):
            first, second = echo.delay(7), echo.delay(8)  # the worker goes on after the first
            deadline = time.monotonic() + 10
            while len(errors) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
    finally:
        signals.task_internal_error.disconnect(receiver)
        app.close()
    assert sorted(error["task_id"] for error in errors) == sorted([first.id, second.id])
    [error] = [error for error in errors if error["task_id"] == first.id]
    assert error["sender"] is echo and error["args"] == (7,) and error["kwargs"] == {}
    assert isinstance(error["exception"], RuntimeError) and error["einfo"].exception is error["exception"]
    assert error["request"].id == first.id and error["traceback"] is not None
