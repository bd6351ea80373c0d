"""Task history from the workers' monitoring events: one record per task, in Flower's fields.

Workers write Celery's task-* events to the broker (`worker_send_task_events`,
`-E`); the state store keeps the latest `EVENTS_KEPT`. Folding them, oldest first,
gives each task its latest state and the time of each step (`received`,
`started`, `succeeded`, ...), which is what Flower's task list and task page
show and what its API returns.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any

#: A task's state after each event.
STATE_OF_EVENT = {
    "task-sent": "PENDING", "task-received": "RECEIVED", "task-started": "STARTED", "task-succeeded": "SUCCESS",
    "task-failed": "FAILURE", "task-retried": "RETRY", "task-revoked": "REVOKED", "task-rejected": "REJECTED",
    "task-ignored": "IGNORED",
}  # fmt: skip
#: Flower's task fields, each None until known.
FIELDS = (
    "uuid", "name", "state", "received", "sent", "started", "rejected", "succeeded", "failed", "retried",
    "revoked", "args", "kwargs", "eta", "expires", "retries", "worker", "result", "exception", "timestamp",
    "runtime", "traceback", "exchange", "routing_key", "clock", "client", "root_id", "parent_id",
)  # fmt: skip
_RENAMED = {"hostname": "worker", "queue": "routing_key"}


def fold(events: Iterable[bytes]) -> dict[str, dict[str, Any]]:
    """Each task's record, by id, the most recently active last."""
    tasks: dict[str, dict[str, Any]] = {}
    for raw in events:
        try:
            event = json.loads(raw)
            task_id, kind, at = event["uuid"], event["type"], event.get("timestamp")
        except (ValueError, KeyError, TypeError):
            continue  # not an event of ours: skip it, do not fail the page
        if not isinstance(task_id, str) or kind not in STATE_OF_EVENT:
            continue
        task = tasks.pop(task_id, None) or dict.fromkeys(FIELDS)
        tasks[task_id] = task  # re-inserted: the dict stays ordered by latest activity
        for key, value in event.items():
            if key not in ("type", "timestamp"):
                task[_RENAMED.get(key, key)] = value
        task["uuid"], task["state"], task["timestamp"] = task_id, STATE_OF_EVENT[kind], at
        task[kind.removeprefix("task-")] = at  # received, started, succeeded, failed, ...
    return tasks


def select(
    tasks: dict[str, dict[str, Any]],
    *,
    worker: str | None = None,
    name: str | None = None,
    state: str | None = None,
    received_start: str | None = None,
    received_end: str | None = None,
    search: str | None = None,
    sort_by: str | None = None,
    offset: int = 0,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Flower's `/api/tasks` filters: newest first unless `sort_by` names a field (`-field`: descending).

    `received_start` and `received_end` are local times "YYYY-MM-DD HH:MM", as Flower takes them.
    """
    start = _local_time(received_start)
    end = _local_time(received_end)
    needle = search.lower() if search else None
    chosen = []
    for task in reversed(tasks.values()):
        received = task.get("received")
        if (worker and task.get("worker") != worker) or (name and task.get("name") != name):
            continue
        if (state and task.get("state") != state) or (start and (received or 0) < start):
            continue
        if (end and (received is None or received > end)) or (needle and needle not in _searchable(task)):
            continue
        chosen.append(task)
    if sort_by:
        key, descending = sort_by.lstrip("-"), sort_by.startswith("-")
        # Unknown values last; a field holds one type (times, names), so known ones compare.
        chosen.sort(key=lambda t: (t.get(key) is None, t.get(key) if t.get(key) is not None else 0), reverse=descending)
    return chosen[offset : offset + limit if limit else None]


def _searchable(task: dict[str, Any]) -> str:
    return " ".join(str(task.get(k) or "") for k in ("uuid", "name", "args", "kwargs", "result", "exception")).lower()


def _local_time(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%d %H:%M").timestamp()
    except ValueError:
        raise ValueError(f"expects a time as YYYY-MM-DD HH:MM, not {value!r}") from None
