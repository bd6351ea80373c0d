"""The dashboard's folds (S8): worker events into a task list, worker heartbeats into rates over time."""

from __future__ import annotations

import json
import time

from hypothesis import example, given, settings
from hypothesis import strategies as st

from conveyor import Celery, states
from conveyor.backends.base import StoredTask
from conveyor.dashboard.history import TaskHistory, fold, from_backend, select
from conveyor.dashboard.server import Rates, recent_tasks
from conveyor.worker.events import events_of

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: st.lists(children, max_size=20) | st.dictionaries(st.text(max_size=10), children, max_size=20),
    max_leaves=40,
)


def event(kind: str, task_id: str, at: float, **fields: object) -> bytes:
    return json.dumps({"type": f"task-{kind}", "uuid": task_id, "name": "t.add", "timestamp": at, **fields}).encode()


def test_events_fold_into_one_row_per_task_newest_first() -> None:
    events = [
        event("received", "a", 1.0, args="(1, 2)"),
        event("received", "b", 2.0, args="(3, 4)"),
        event("started", "a", 3.0, pid=7),
        b"not json at all",  # a foreign entry: skipped, never breaks the page
        json.dumps({"type": "worker-heartbeat"}).encode(),
        event("succeeded", "a", 4.0, result="3", runtime=0.5),
    ]
    rows = recent_tasks(fold(events_of(events)), 10)
    assert [row["id"] for row in rows] == ["a", "b"]
    a, b = rows
    assert a["state"] == "SUCCESS" and a["args"] == "(1, 2)" and a["result"] == "3" and a["pid"] == 7
    assert a["received"] == 1.0 and a["updated"] == 4.0 and a["runtime"] == 0.5
    assert b["state"] == "RECEIVED"
    assert recent_tasks(fold(events_of(events)), 1) == [a]


def overview(queued: int, **processed: int) -> dict[str, object]:
    return {"workers": [{"hostname": w, "processed": n} for w, n in processed.items()], "queues": {"celery": queued}}


def test_rates_count_growth_across_missed_heartbeats_and_restarts() -> None:
    rates = Rates(kept=3)
    rates.add(10.0, overview(5, a=100))  # the baseline: no rate yet
    rates.add(12.0, overview(4, a=110, b=7))  # b appears: its count is its baseline
    rates.add(14.0, overview(3, b=17))  # a missed a heartbeat: nothing lost...
    rates.add(16.0, overview(0, a=130, b=3))  # ...counted when it is back; b restarted at 0, did 3
    assert [(s["at"], s["rate"], s["waiting"], s["workers"]) for s in rates.samples] == [
        (12.0, 5.0, 4, 2),
        (14.0, 5.0, 3, 1),
        (16.0, 11.5, 0, 2),
    ]
    rates.add(18.0, overview(0, a=130, b=3))
    assert len(rates.samples) == 3 and rates.samples[-1]["rate"] == 0.0  # only the last `kept`


def memory_app(name: str) -> Celery:
    return Celery(name, broker=f"memory://{name}", result_backend=f"memory://{name}")


def test_tasks_without_events_come_from_the_result_backend_and_events_win() -> None:
    app = memory_app("history-backend")
    backend, at = app.backend, time.time() - 100  # (results stay a day: recent ones)
    backend.write([backend.make_update("ran-before", states.SUCCESS, [1, 2], now=at,
                                       history={"name": "t.add", "worker": "w1@host", "runtime": 0.25})])  # fmt: skip
    backend.write([backend.make_update("broke", states.FAILURE, ValueError("no"), traceback="Traceback ...",
                                       history={"name": "t.div", "worker": "w1@host"}, now=at + 1)])  # fmt: skip
    backend.write([backend.make_update("seen", states.SUCCESS, 3, history={"name": "t.add"}, now=at + 2)])
    app.state.add_events([event("succeeded", "seen", at + 3, result="3", hostname="w2@host", args="(1, 2)")])
    history = TaskHistory(app.state, backend)
    history.refresh()

    assert history.load_stored() == 2  # "seen" is known from its event
    tasks = history.snapshot()
    assert list(tasks) == ["ran-before", "broke", "seen"]  # least recently active first
    before = history.get("ran-before")
    assert before is not None
    assert before["name"] == "t.add" and before["state"] == states.SUCCESS and before["result"] == "[1, 2]"
    assert before["worker"] == "w1@host" and before["runtime"] == 0.25
    assert before["succeeded"] == at and before["started"] == at - 0.25
    broke = history.get("broke")
    assert broke is not None and broke["exception"] == "ValueError('no')" and broke["traceback"] == "Traceback ..."
    seen = history.get("seen")
    assert seen is not None and seen["worker"] == "w2@host" and seen["args"] == "(1, 2)"
    assert history.get("never-ran") is None
    app.close()


def test_a_task_stored_after_the_dashboard_started_is_found_by_id() -> None:
    app = memory_app("history-lookup")
    history = TaskHistory(app.state, app.backend)
    app.backend.store("later", states.SUCCESS, 5, history={"name": "t.add"})
    found = history.get("later")
    assert found is not None and found["state"] == states.SUCCESS and found["name"] == "t.add"
    app.close()


def test_refresh_folds_only_new_events_and_the_least_recent_tasks_are_forgotten() -> None:
    app = memory_app("history-refresh")
    history = TaskHistory(app.state, app.backend, kept=2)
    app.state.add_events([event("received", "a", 1.0), event("received", "b", 2.0)])
    assert len(history.refresh()) == 2
    assert history.refresh() == []
    app.state.add_events([event("succeeded", "a", 3.0), event("received", "c", 4.0)])
    assert len(history.refresh()) == 2
    assert list(history.snapshot()) == ["a", "c"]  # b, the least recently active, went
    app.close()


def test_a_record_of_rows_reads_as_celerys_events_leaving_out_what_a_row_lacks() -> None:
    record = json.dumps([
        ["task-succeeded", "a", "t.add", "w1", 5.0, 4.0, 4.5, 7, 0.5, "3", None, "(1, 2)", "{}", 0, "celery"],
        ["task-started", "b", "t.add", "w1", 6.0, None, 6.0, 8],
        "not a row",
    ]).encode()  # fmt: skip
    first, second = list(events_of([record, b"\xff not json", b'{"type": "task-sent", "uuid": "c"}']))[:2]
    assert first == {"type": "task-succeeded", "uuid": "a", "name": "t.add", "hostname": "w1", "timestamp": 5.0,
                     "received": 4.0, "started": 4.5, "pid": 7, "runtime": 0.5, "result": "3", "args": "(1, 2)",
                     "kwargs": "{}", "retries": 0, "queue": "celery"}  # fmt: skip
    assert second == {"type": "task-started", "uuid": "b", "name": "t.add", "hostname": "w1", "timestamp": 6.0,
                      "started": 6.0, "pid": 8}  # fmt: skip
    tasks = fold(events_of([record, b'{"type": "task-sent", "uuid": "c", "timestamp": 1.0}']))
    assert tasks["a"]["state"] == "SUCCESS" and tasks["b"]["state"] == "STARTED" and tasks["c"]["state"] == "PENDING"


@example(
    [b'[[["a list"], "id"]]', b'{"type": {}, "uuid": "x"}', b'{"type": "task-sent", "uuid": "y", "timestamp": "z"}']
)
@given(st.lists(st.one_of(st.binary(max_size=200), st.builds(lambda v: json.dumps(v).encode(), JSON))))
@settings(max_examples=200, deadline=None)
def test_any_record_in_the_event_store_folds_without_error(records: list[bytes]) -> None:
    tasks = fold(events_of(records))
    assert all(isinstance(task_id, str) for task_id in tasks)
    recent_tasks(tasks, 10)
    for sort_by in ("received", "-runtime", "name", "-worker", "args"):
        assert len(select(tasks, sort_by=sort_by, search="a")) <= len(tasks)


def test_a_damaged_stored_result_is_left_out_of_the_list_without_error() -> None:
    decode = json.loads
    assert from_backend(StoredTask("a", b'{"status": "SUCCESS", "args": 5}', None), decode) is None
    assert from_backend(StoredTask("b", b"not json", None), decode) is None
    assert from_backend(StoredTask("c", b'{"status": 3}', None), decode) is None
    assert from_backend(StoredTask("d", b'{"status": "FAILURE", "result": {"exc_type": 5}}', b"[]"), decode) is None
    good = from_backend(StoredTask("e", b'{"status": "SUCCESS", "result": 2}', b'{"name": "t.x"}'), decode)
    assert good is not None and good["name"] == "t.x" and good["result"] == "2"
