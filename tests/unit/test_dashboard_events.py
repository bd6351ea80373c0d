"""The dashboard's task list folds worker events (S8): latest state per task, newest activity first."""

from __future__ import annotations

import json

from conveyor.dashboard.server import recent_tasks


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
    rows = recent_tasks(events, 10)
    assert [row["id"] for row in rows] == ["a", "b"]
    a, b = rows
    assert a["state"] == "SUCCESS" and a["args"] == "(1, 2)" and a["result"] == "3" and a["pid"] == 7
    assert a["received"] == 1.0 and a["updated"] == 4.0 and a["runtime"] == 0.5
    assert b["state"] == "RECEIVED"
    assert recent_tasks(events, 1) == [a]
