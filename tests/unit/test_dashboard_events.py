"""The dashboard's folds (S8): worker events into a task list, worker heartbeats into rates over time."""

from __future__ import annotations

import json

from conveyor.dashboard.server import Rates, recent_tasks


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
