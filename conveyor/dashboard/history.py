"""Task history: one record per task, in Flower's fields, from the workers' events and the
result backend.

Workers write Celery's task-* events to the state store (`worker_send_task_events`, on
by default); it keeps the latest `EVENTS_KEPT`. Folding them, oldest first, gives each
task its latest state and the time of each step (`received`, `started`, `succeeded`,
...), which is what Flower's task list and task page show and what its API returns.

Tasks the dashboard saw no event of (they ran before the events it can still read, or
on a worker with events off) come from the result backend (`ResultBackend.recent`):
their state, result, worker, runtime and, with `result_extended`, arguments. So a
dashboard started later, or restarted, shows what ran before it.
"""

from __future__ import annotations

import itertools
import operator
import threading
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from conveyor import states
from conveyor.backends.base import ResultBackend, StoredTask, decode_exception
from conveyor.brokers.state import EVENTS_KEPT, StateStore
from conveyor.worker.events import events_of

#: Tasks the dashboard keeps, the least recently active forgotten first.
TASKS_KEPT = 100_000
#: Records read first at each refresh (more if the last one read is not among them).
FIRST_READ = 64

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
#: Fields that hold numbers (times, seconds, counts).
NUMBERS = frozenset({"received", "sent", "started", "rejected", "succeeded", "failed", "retried", "revoked",
                     "runtime", "retries", "clock", "pid"})  # fmt: skip


def fold(events: Iterable[dict[str, Any]], tasks: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """Each task's record, by id, the most recently active last (`tasks`: records to fold into).

    Records hold only the fields known (`complete` adds the others as None)."""
    tasks = {} if tasks is None else tasks
    for event in events:
        try:
            task_id, kind, at = event["uuid"], event["type"], event.get("timestamp")
        except (KeyError, TypeError):
            continue  # not an event of ours: skip it, do not fail the page
        if not isinstance(task_id, str) or not isinstance(kind, str) or kind not in STATE_OF_EVENT:
            continue
        if not isinstance(at, (int, float)):
            at = None
        task = tasks.pop(task_id, None) or {}
        tasks[task_id] = task  # re-inserted: the dict stays ordered by latest activity
        for key, value in event.items():
            if key in NUMBERS and not isinstance(value, (int, float)):
                continue  # times and runtimes are numbers: they sort and compare
            if key not in ("type", "timestamp"):
                task[_RENAMED.get(key, key)] = value
        task["uuid"], task["state"], task["timestamp"] = task_id, STATE_OF_EVENT[kind], at
        task[kind.removeprefix("task-")] = at  # received, started, succeeded, failed, ...
    return tasks


def complete(task: dict[str, Any]) -> dict[str, Any]:
    """A record with every one of Flower's fields (None where unknown)."""
    return {**_EMPTY, **task}


_EMPTY = dict.fromkeys(FIELDS)


def from_backend(stored: StoredTask, decode: Callable[[bytes], Any]) -> dict[str, Any] | None:
    """A task's record from what the result backend holds of it (None: not a result record)."""
    try:
        meta = decode(stored.meta)
        entry = decode(stored.last_history) if stored.last_history is not None else {}
        if not isinstance(meta, dict) or not isinstance(entry, dict) or not isinstance(meta.get("status"), str):
            return None
        return _record(stored.task_id, meta, entry)
    except Exception:  # unreadable (another serializer, a foreign or damaged record): not shown
        return None


def _record(task_id: str, meta: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
    state, at = meta["status"], entry.get("timestamp")
    if not isinstance(at, (int, float)) and isinstance(meta.get("date_done"), str):
        try:
            at = datetime.fromisoformat(meta["date_done"]).timestamp()
        except ValueError:
            at = None
    task: dict[str, Any] = {"uuid": task_id, "state": state, "timestamp": at}
    for key in ("name", "worker", "retries", "runtime"):
        value = entry.get(key, meta.get(key))
        if value is not None:
            task[key] = value
    for key in ("args", "kwargs"):
        if key in meta:
            task[key] = repr(tuple(meta[key]) if key == "args" else meta[key])
    for key in ("queue", "parent_id", "root_id"):
        if meta.get(key):
            task[_RENAMED.get(key, key)] = meta[key]
    if state == states.SUCCESS:
        task["result"] = repr(meta.get("result"))
    elif state in states.EXCEPTION_STATES and isinstance(meta.get("result"), dict):
        task["exception"] = repr(decode_exception(meta["result"]))
        task["traceback"] = meta.get("traceback")
    if state in STATE_OF_EVENT.values() and at is not None:
        kind = next(k for k, v in STATE_OF_EVENT.items() if v == state).removeprefix("task-")
        task[kind] = at
        if isinstance(task.get("runtime"), (int, float)) and state in states.READY_STATES:
            task["started"] = at - task["runtime"]
    return task


class TaskHistory:
    """Every task the dashboard knows of, by id, the most recently active last; at most `kept`.

    `refresh` folds in the events written since the last call; `load_stored` adds what
    the result backend holds of tasks no event told of. Thread-safe."""

    def __init__(self, state: StateStore, backend: ResultBackend, kept: int = TASKS_KEPT) -> None:
        self.state, self.backend, self.kept = state, backend, kept
        self._tasks: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._last_record: bytes | None = None

    def __len__(self) -> int:
        return len(self._tasks)

    def refresh(self) -> list[dict[str, Any]]:
        """Fold in the events written since the last call (read from the state store); return them."""
        with self._refresh_lock:
            # The latest records, more of them until the last one read is among them: a refresh
            # reads about what was written since the one before, not all the store keeps.
            limit = FIRST_READ
            while True:
                records = self.state.recent_events(limit)
                start = self._after_last(records)
                if start is not None or len(records) < limit or limit >= EVENTS_KEPT:
                    break
                limit *= 4
            new = records[start or 0 :]
            if new:
                self._last_record = new[-1]
            events = list(events_of(new))
            with self._lock:
                fold(events, self._tasks)
                self._forget_oldest()
            return events

    def _after_last(self, records: list[bytes]) -> int | None:
        if self._last_record is None:
            return None
        for index in range(len(records) - 1, -1, -1):
            if records[index] == self._last_record:
                return index + 1
        return None

    def load_stored(self) -> int:
        """Add the result backend's tasks that no event told of; return how many."""
        stored = self.backend.recent(self.kept)
        with self._lock:
            known = self._tasks
            added = [t for t in (from_backend(s, self.backend.decode) for s in stored if s.task_id not in known) if t]
            if added:
                # Older than what events told: before them in the order of activity.
                added.sort(key=lambda t: t.get("timestamp") or 0)
                rebuilt = {t["uuid"]: t for t in added}
                rebuilt.update(known)
                self._tasks = rebuilt
                self._forget_oldest()
        return len(added)

    def _forget_oldest(self) -> None:
        excess = len(self._tasks) - self.kept
        if excess > 0:
            for task_id in list(itertools.islice(self._tasks, excess)):
                del self._tasks[task_id]

    def get(self, task_id: str) -> dict[str, Any] | None:
        """A task's record: from the events, else from the result backend (None: unknown)."""
        with self._lock:
            task = self._tasks.get(task_id)
        if task is None:
            meta = self.backend.read([task_id]).get(task_id)
            if meta is None:
                return None
            history = self.backend.read_history(task_id)
            task = from_backend(StoredTask(task_id, meta, history[-1] if history else None), self.backend.decode)
        return None if task is None else complete(task)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """The records as they are now (the dict is a copy; records are not to be changed)."""
        with self._lock:
            return dict(self._tasks)


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
) -> list[dict[str, Any]]:
    """Flower's `/api/tasks` filters: newest first unless `sort_by` names a field (`-field`:
    descending; tasks without it last). The records as kept: `complete` the ones shown.

    `received_start` and `received_end` are local times "YYYY-MM-DD HH:MM", as Flower takes them.
    """
    start = _local_time(received_start)
    end = _local_time(received_end)
    needle = search.lower() if search else None
    chosen: list[dict[str, Any]] = list(reversed(tasks.values()))
    # One pass per filter given, each a comprehension: the list of 100,000 shrinks fast.
    if worker:
        chosen = [t for t in chosen if t.get("worker") == worker]
    if name:
        chosen = [t for t in chosen if t.get("name") == name]
    if state:
        chosen = [t for t in chosen if t.get("state") == state]
    if start:
        chosen = [t for t in chosen if (t.get("received") or 0) >= start]
    if end:
        chosen = [t for t in chosen if t.get("received") is not None and t["received"] <= end]
    if needle:
        chosen = [t for t in chosen if needle in _searchable(t)]
    if sort_by:
        key, descending = sort_by.lstrip("-"), sort_by.startswith("-")
        known = [t for t in chosen if t.get(key) is not None]
        try:
            known.sort(key=operator.itemgetter(key), reverse=descending)
        except TypeError:  # values of several types (events of other writers): compared as text
            known.sort(key=lambda t: str(t[key]), reverse=descending)
        chosen = known + [t for t in chosen if t.get(key) is None]
    return chosen


def _searchable(task: dict[str, Any]) -> str:
    return " ".join(str(task.get(k) or "") for k in ("uuid", "name", "args", "kwargs", "result", "exception")).lower()


def _local_time(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%d %H:%M").timestamp()
    except ValueError:
        raise ValueError(f"expects a time as YYYY-MM-DD HH:MM, not {value!r}") from None
