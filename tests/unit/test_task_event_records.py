"""The records the task-events hook writes: what a row leaves out is put back when read, and a
task's arguments read as Celery's repr strings however they were kept."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conveyor import Celery
from conveyor.brokers.base import Delivery
from conveyor.execution import Job, Outcome, short_repr
from conveyor.messages import Message
from conveyor.worker.events import RAW_ARGUMENTS_BYTES, ROWS_PER_RECORD, TaskEvents, events_of
from conveyor.worker.hooks import Held
from conveyor.worker.worker import Worker

#: What a JSON message's arguments can hold once decoded (NaN and the infinities read back as
#: None: JSON has no spelling for them that orjson writes).
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=5), children, max_size=5),
    max_leaves=20,
)
_ids = itertools.count()


@pytest.fixture(scope="module")
def hook() -> Iterator[TaskEvents]:
    app = Celery("event-records", broker="memory://event-records")
    events = TaskEvents()
    events.start(Worker(app, pool="solo", hooks=[events], hostname="w1@records"))
    yield events
    app.close()


def ended(hook: TaskEvents, message: Message, body: bytes | None = None) -> None:
    """Tell the hook that `message` ran and succeeded; `body` what it came as (its encoding)."""
    job_id, now = next(_ids), time.time()
    body = message.encode(format="compact") if body is None else body
    held = Held(Job(job_id, message, "celery", "w1@records"), Delivery("celery", body, None), now - 0.01,
                started=True, pid=7, started_at=now - 0.005)  # fmt: skip
    hook.finished(held, Outcome(job_id, message.id, "SUCCESS", 0.005, "None"))


def written(hook: TaskEvents) -> list[bytes]:
    hook.worker.closing = True  # a closing worker writes what waits
    try:
        hook.flush()
    finally:
        hook.worker.closing = False
    records = list(hook.events.events)
    hook.events.events.clear()
    return records


def test_rows_leave_out_the_hostname_and_a_tasks_own_root_and_reading_puts_them_back(hook: TaskEvents) -> None:
    own = Message(task="t.add", args=(1, 2))
    child = Message(task="t.add", args=(3,), root_id=own.id, parent_id=own.id)
    ended(hook, own)
    ended(hook, child)
    (record,) = written(hook)
    assert record.count(b"w1@records") == 1 and record.count(own.id.encode()) == 3  # its row, child's root, parent
    first, second = events_of([record])
    assert first["hostname"] == second["hostname"] == "w1@records"
    assert first["root_id"] == own.id and "parent_id" not in first
    assert second["root_id"] == second["parent_id"] == own.id
    assert first["args"] == "(1, 2)" and first["kwargs"] == "{}" and second["args"] == "(3,)"
    assert orjson.loads(record)[1][11:13] == [[1, 2], {}]  # kept as they are, rendered when read


def test_a_busy_workers_events_make_one_record_per_rows_per_record(hook: TaskEvents) -> None:
    for i in range(ROWS_PER_RECORD * 2 + 1):
        ended(hook, Message(task="t.add", args=(i,)))
    records = written(hook)
    assert [len(orjson.loads(record)) - 1 for record in records] == [ROWS_PER_RECORD, ROWS_PER_RECORD, 1]
    assert [event["args"] for event in events_of(records)] == [f"({i},)" for i in range(ROWS_PER_RECORD * 2 + 1)]


@given(args=st.lists(JSON, max_size=4), kwargs=st.dictionaries(st.text(max_size=8), JSON, max_size=4))
@settings(max_examples=200, deadline=None)
def test_any_json_arguments_read_as_celerys_repr_strings(
    hook: TaskEvents, args: list[Any], kwargs: dict[str, Any]
) -> None:
    # Integers past 64 bits, which orjson does not write, are among them: their record is rendered in full.
    message = Message(task="t.any", args=tuple(args), kwargs=kwargs)
    ended(hook, message, body=b"{}")
    (event,) = events_of(written(hook))
    assert event["args"] == short_repr(tuple(args)) and event["kwargs"] == short_repr(kwargs)


def test_a_large_compressed_or_not_json_message_has_its_arguments_rendered_and_cut_short_by_the_worker(
    hook: TaskEvents,
) -> None:
    big = Message(task="t.big", args=("x" * RAW_ARGUMENTS_BYTES * 4,), kwargs={"n": 1})
    as_msgpack = Message(task="t.add", args=(b"\x00bytes",), content_type="application/x-msgpack")
    # Arguments a record could hold as they are: only the message's encoding says they are rendered.
    compressed = Message(task="t.add", args=(1, [2, 3]), compression="zlib")
    msgpack_json_like = Message(task="t.add", args=(1, [2, 3]), content_type="application/x-msgpack")
    ended(hook, big)
    ended(hook, as_msgpack, body=b"small")
    (record,) = written(hook)
    assert len(record) < RAW_ARGUMENTS_BYTES * 2  # the long argument was not kept
    first, second = events_of([record])
    assert first["args"] == short_repr(big.args) and len(first["args"]) == 200 and first["kwargs"] == "{'n': 1}"
    assert second["args"] == "(b'\\x00bytes',)"
    ended(hook, compressed, body=b"small")
    ended(hook, msgpack_json_like, body=b"small")
    (record,) = written(hook)  # one orjson could write whole: each row's arguments were rendered before
    assert all(isinstance(row[11], str) and isinstance(row[12], str) for row in orjson.loads(record)[1:])
    third, fourth = events_of([record])
    assert third["args"] == fourth["args"] == "(1, [2, 3])" and third["kwargs"] == "{}"
