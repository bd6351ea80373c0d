"""Malformed messages never stop a worker: each ends in the dead letters or as a FAILURE with a reason.

A real Worker runs in a thread of the test process. Hypothesis takes valid
messages in both envelopes (compact and Celery's JSON one), changes one field
(a wrong type, out of range, missing, huge, nested 100,000 deep, or the whole
message replaced by random bytes), publishes it raw through the broker
between good tasks (on every broker, RabbitMQ with a tenth of the examples),
and checks that the worker keeps running, every good task succeeds once, and
every bad message is settled well before its lease lapses.
"""

from __future__ import annotations

import base64
import json
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, Phase, given, reject, settings
from hypothesis import strategies as st

from conveyor import Celery, states
from conveyor.brokers.base import Outgoing
from conveyor.messages import COMPACT_MAGIC, Message
from conveyor.worker import Worker
from tests.conftest import contract_app, store_url

#: Examples per envelope and broker; RabbitMQ gets a tenth (reading its dead letters back reads them all).
EXAMPLES = int(os.environ.get("CONVEYOR_FUZZ_EXAMPLES", "500"))
AMQP_EXAMPLES = max(1, EXAMPLES // 10)
QUEUE = "celery"
#: A bad message must be settled within this many seconds; its lease is far longer.
SETTLE_SECONDS = 10
LEASE_SECONDS = 120

DEEP = "__nested_deep__"
MISSING = object()
DEPTH = 100_000

HEADER_FIELDS = [
    "task", "id", "retries", "timelimit", "eta", "expires", "group", "group_index", "root_id", "parent_id",
    "shadow", "origin", "ignore_result", "compression", "conveyor_chord", "lang", "argsrepr",
]  # fmt: skip
PROPERTY_FIELDS = ["priority", "reply_to", "body_encoding", "correlation_id"]
EMBED_FIELDS = ["callbacks", "errbacks", "chain", "chord"]

junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**20, max_value=10**30),
    st.floats(allow_nan=False),
    st.text(max_size=12),
    st.just("x" * 200_000),
    st.lists(st.one_of(st.integers(), st.text(max_size=4)), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=3),
    st.just(DEEP),
    st.just(MISSING),
)

mutation = st.one_of(
    st.tuples(st.just("header"), st.sampled_from(HEADER_FIELDS), junk),
    st.tuples(st.just("property"), st.sampled_from(PROPERTY_FIELDS), junk),
    st.tuples(st.just("payload"), st.sampled_from([0, 1, 2]), junk),
    st.tuples(st.just("embed"), st.sampled_from(EMBED_FIELDS), junk),
    st.tuples(st.just("envelope"), st.sampled_from(["body", "content-type", "headers", "properties", "version"]), junk),
    st.tuples(st.just("bytes"), st.just(""), st.binary(max_size=256)),
)


def _set(container: dict[Any, Any] | list[Any], key: Any, value: Any) -> None:
    if value is MISSING:
        if isinstance(container, dict):
            container.pop(key, None)
        else:
            del container[key]
    else:
        container[key] = value


def _deep_json(text: str) -> str:
    return text.replace(json.dumps(DEEP), "[" * DEPTH + "]" * DEPTH)


def _deep_msgpack(data: bytes) -> bytes:
    # A one-element array (0x91) nested DEPTH times around an empty one (0x90).
    return data.replace(msgpack.packb(DEEP), b"\x91" * DEPTH + b"\x90")


def _payload(body: bytes, kind: str, key: Any, value: Any) -> bytes:
    payload = json.loads(body)
    while len(payload) < 3:
        payload.append({})
    if kind == "payload":
        _set(payload, key, value)
    else:
        _set(payload[2], key, value)
    return _deep_json(json.dumps(payload)).encode()


def bad_json(message: Message, kind: str, key: Any, value: Any) -> bytes:
    envelope = json.loads(message.encode("json", format="celery"))
    if kind == "header":
        _set(envelope["headers"], key, value)
    elif kind == "property":
        _set(envelope["properties"], key, value)
    elif kind in ("payload", "embed"):
        body = base64.b64decode(envelope["body"])
        envelope["body"] = base64.b64encode(_payload(body, kind, key, value)).decode()
    else:
        _set(envelope, key, value)
    return _deep_json(json.dumps(envelope)).encode()


def bad_compact(message: Message, kind: str, key: Any, value: Any) -> bytes:
    fields = msgpack.unpackb(message.encode("json", format="compact")[1:], raw=False)
    version, content_type, headers, properties, body = fields
    if kind == "header":
        _set(headers, key, value)
    elif kind == "property":
        _set(properties, key, value)
    elif kind in ("payload", "embed"):
        body = _payload(body, kind, key, value)
    fields = [version, content_type, headers, properties, body]
    if kind == "envelope":
        index = {"version": 0, "content-type": 1, "headers": 2, "properties": 3, "body": 4}[key]
        fields[index] = value if value is not MISSING else None
    try:
        return COMPACT_MAGIC + _deep_msgpack(msgpack.packb(fields, use_bin_type=True))
    except OverflowError:
        reject()  # msgpack has no such integer: no producer can send it
        raise


def make_app(kind: str, tmp_path: Any) -> tuple[Celery, list[str]]:
    url, options = store_url(kind, tmp_path)
    app = contract_app("poison", (url, options))
    app.conf.broker_transport_options = {**app.conf.broker_transport_options, "lease_timeout": LEASE_SECONDS}
    ran: list[str] = []

    @app.task(name="t.add", bind=True)
    def add(self: Any, x: int, y: int) -> int:
        ran.append(self.request.id)
        return x + y

    return app, ran


@pytest.fixture(params=["memory", "sqlite", "redis", "amqp"])
def poisoned(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[tuple[Celery, list[str], Worker]]:
    app, ran = make_app(request.param, tmp_path)
    worker = Worker(app, pool="threads", concurrency=2, hostname="w1@poison")
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    assert worker.ready.wait(10), "worker did not start"
    try:
        yield app, ran, worker
        assert thread.is_alive(), "a malformed message stopped the worker"
    finally:
        worker.stop()
        thread.join(30)
    app.close()


def newest_dead_letter(app: Celery) -> tuple[float, str] | None:
    letters = app.broker.dead_letters(1)
    return (letters[0].failed_at, letters[0].reason) if letters else None


def settle(app: Celery, ran: list[str], body: bytes, task_id: Any, dead_before: tuple[float, str] | None) -> str:
    """How the bad message ended: its task's final state, 'ran' (a change that left it valid, with
    ignore_result, stores nothing), or 'dead-lettered' (the one new dead letter: each example sends
    one bad message)."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while time.monotonic() < deadline:
        if task_id in ran:
            return "ran"
        if isinstance(task_id, str) and task_id:
            state = app.AsyncResult(task_id).state
            if state in states.READY_STATES:
                return state
        # The message itself among the newest dead letters (RabbitMQ keeps the time of each in
        # whole seconds: two alike in one second look the same by time and reason).
        if newest_dead_letter(app) != dead_before or any(d.body == body for d in app.broker.dead_letters(3)):
            return "dead-lettered"
        time.sleep(0.01)
    raise AssertionError(f"a malformed message was not settled within {SETTLE_SECONDS} s: {body[:200]!r}")


@pytest.mark.parametrize("envelope", ["compact", "celery"])
def test_a_malformed_message_is_dead_lettered_or_failed_and_the_worker_keeps_running(
    poisoned: tuple[Celery, list[str], Worker], envelope: str
) -> None:
    app, ran, _ = poisoned
    mutate = bad_compact if envelope == "compact" else bad_json
    count = iter(range(10**9))
    good_ids: list[str] = []

    # No shrinking: each step would cost a live worker's settle time; the failing example is printed as found.
    @settings(
        max_examples=AMQP_EXAMPLES if app.broker_url.startswith("amqp") else EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        print_blob=False,
    )
    @given(mutation)
    def check(change: tuple[str, Any, Any]) -> None:
        kind, key, value = change
        n = next(count)
        original = Message("t.add", id=f"bad-{n}", args=(n, 1), retries=1, time_limit=30.0, soft_time_limit=20.0)
        body = bytes(value) if kind == "bytes" else mutate(original, kind, key, value)
        good = Message("t.add", id=f"good-{n}", args=(n, 2))
        dead_before = newest_dead_letter(app)
        app.broker.publish([Outgoing(QUEUE, body), Outgoing(QUEUE, good.encode(format=envelope))])
        assert app.AsyncResult(good.id).get(timeout=SETTLE_SECONDS) == n + 2
        good_ids.append(good.id)
        readable_id = f"bad-{n}" if not (kind == "header" and key == "id") else value
        fate = settle(app, ran, body, readable_id, dead_before)
        assert fate in (states.SUCCESS, states.FAILURE, states.REVOKED, "ran", "dead-lettered")
        if fate == states.FAILURE and kind != "bytes":
            assert app.AsyncResult(readable_id).traceback  # the reason is recorded

    check()
    assert sorted(ran).count(good_ids[0]) == 1
    assert all(ran.count(task_id) == 1 for task_id in good_ids), "a good task ran more or less than once"
