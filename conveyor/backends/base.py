"""The result-backend interface, and the result encoding every backend shares.

Implementations store opaque bytes under a task id: the task's current *meta*
(state, result, traceback, ... in Celery's layout, serialized with
`result_serializer`) and an append-only *history* (one entry per state, for
`AsyncResult.scoreboard`). Encoding, exceptions and waiting logic live here,
once, above them.
"""

from __future__ import annotations

import builtins
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, NamedTuple

from conveyor import exceptions, serialization, states
from conveyor.exceptions import DecodeError
from conveyor.urls import redacted

#: Seconds between polls for backends that cannot push (and the fallback for those that can).
DEFAULT_POLLING_INTERVAL = 0.5


@dataclass(slots=True)  # not frozen: one is made per task, and a frozen __init__ costs four times more
class StateUpdate:
    """One state change of one task, as stored."""

    task_id: str
    state: str
    meta: bytes
    history: tuple[bytes, ...]
    """History entries to append, oldest first."""
    expires_at: float | None
    reply_to: str | None = None
    """Where the caller waits for it (the message's `reply_to`): what the rpc backend sends to."""


def coalesce(updates: Sequence[StateUpdate]) -> list[StateUpdate]:
    """One update per task: its latest state (a SUCCESS is never replaced) and every history entry.

    A worker under load often has a task's STARTED and its result in one
    batch: written as one, that is one store operation instead of two.
    """
    merged: dict[str, StateUpdate] = {}
    for update in updates:
        previous = merged.get(update.task_id)
        if previous is None:
            merged[update.task_id] = update
        else:
            latest = previous if previous.state == states.SUCCESS else update
            merged[update.task_id] = replace(latest, history=previous.history + update.history)
    return list(merged.values())


class StoredTask(NamedTuple):
    """A task as the result backend holds it (`ResultBackend.recent`)."""

    task_id: str
    meta: bytes
    last_history: bytes | None
    """Its latest history entry (who ran it, when, for how long), if any."""


class Waiter:
    """Blocks a caller until results may have changed. This one just polls."""

    def __init__(self, interval: float = DEFAULT_POLLING_INTERVAL) -> None:
        self.interval = interval

    def wait(self, timeout: float) -> None:
        time.sleep(max(0.0, min(timeout, self.interval)))

    def close(self) -> None:
        pass

    def __enter__(self) -> Waiter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def encode_exception(exc: BaseException) -> dict[str, Any]:
    """Celery's layout: type name, message arguments, module."""
    args: list[Any] = []
    for arg in exc.args:
        try:
            serialization.dumps(arg, "json")
            args.append(arg)
        except TypeError:
            args.append(repr(arg))
    return {"exc_type": type(exc).__name__, "exc_message": args, "exc_module": type(exc).__module__}


def decode_exception(data: Mapping[str, Any]) -> BaseException:
    """An instance of the same exception type, when the type is importable here.

    Only modules already imported are searched (decoding must not import code
    named by stored data); otherwise a stand-in type with the same name and
    module is made, so `except` by name in logs still reads right.
    """
    name = str(data.get("exc_type") or "Exception")
    module = str(data.get("exc_module") or "builtins")
    message = data.get("exc_message") or []
    args = tuple(message) if isinstance(message, (list, tuple)) else (message,)
    source = builtins if module == "builtins" else sys.modules.get(module)
    cls = getattr(source, name, None) if source is not None else None
    if not (isinstance(cls, type) and issubclass(cls, BaseException)):
        cls = type(name, (Exception,), {"__module__": module})
    try:
        instance: BaseException = cls(*args)
    except Exception:
        instance = type(name, (Exception,), {"__module__": module})(*args)
    return instance


def isoformat(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat()


class ResultBackend(ABC):
    """Stores task states and results. Thread-safe."""

    #: True when a write wakes callers waiting in `get()`; False when they poll
    #: every `polling_interval` seconds (databases that cannot notify).
    wakes_waiters = True
    #: False where only the process that sent a task sees its state (rpc): chords, whose
    #: unlock runs on a worker, then cannot work.
    shared = True

    def __init__(
        self,
        url: str,
        options: Mapping[str, Any] | None = None,
        *,
        serializer: str = "json",
        accept: Sequence[str] = ("json",),
        expires: float | None = 86400.0,
    ) -> None:
        self.url = url
        self.options = dict(options or {})
        self.serializer = serialization.serializer(serializer)
        self.accept = serialization.accepted_content_types(accept)
        self.expires = expires

    # -- storage: what an implementation provides ------------------------------------
    @abstractmethod
    def write(self, updates: Sequence[StateUpdate]) -> None:
        """Store updates in order, in one round trip where possible.

        Each sets the task's meta (unless it is already SUCCESS: a late
        duplicate never overwrites a success) and appends its history entries,
        skipping any already recorded, so a batch written again after a lost
        reply leaves the history as if written once.
        """

    @abstractmethod
    def read(self, task_ids: Sequence[str]) -> dict[str, bytes]:
        """Current meta of the tasks that have one (and have not expired)."""

    @abstractmethod
    def read_history(self, task_id: str) -> list[bytes]:
        """History entries of a task, oldest first."""

    @abstractmethod
    def delete(self, task_ids: Sequence[str]) -> None:
        """Forget tasks: meta and history."""

    def recent(self, limit: int) -> list[StoredTask]:
        """Up to `limit` stored tasks, the latest written first where the store can tell: what a
        dashboard shows of the tasks it saw no event of. Empty where results are not shared (rpc)."""
        return []

    def waiter(self, task_id: str) -> Waiter:
        """Create before reading; `wait()` returns when the task may have become ready."""
        return Waiter(float(self.options.get("polling_interval", DEFAULT_POLLING_INTERVAL)))

    def reply_to(self) -> str | None:
        """What a task sent from here puts in its message's `reply_to` (None: nothing)."""
        return None

    def cleanup(self) -> int:
        """Delete expired results (for stores without native expiry); return how many."""
        return 0

    def close(self) -> None:  # noqa: B027
        """Release connections."""

    # -- encoding: shared by every implementation ------------------------------------
    def encode(self, value: Any) -> bytes:
        return self.serializer.dumps(value)

    def decode(self, data: bytes) -> Any:
        return serialization.loads(data, self.serializer.content_type, accept=self.accept)

    def make_update(
        self,
        task_id: str,
        state: str,
        result: Any = None,
        *,
        traceback: str | None = None,
        history: Mapping[str, Any] | None = None,
        extended: Mapping[str, Any] | None = None,
        now: float | None = None,
        reply_to: str | None = None,
        children: Sequence[str] = (),
    ) -> StateUpdate:
        """Encode one state change. Raises TypeError/ValueError when `result` cannot be serialized.

        `children`: the ids of the tasks the run sent, kept as Celery keeps them."""
        now = time.time() if now is None else now
        if isinstance(result, BaseException):
            result = encode_exception(result)
        meta: dict[str, Any] = {
            "status": state,
            "result": result,
            "traceback": traceback,
            "children": [[[child, None], None] for child in children],
            "date_done": isoformat(now) if state in states.READY_STATES else None,
            "task_id": task_id,
            **(extended or {}),
        }
        expires_at = now + self.expires if self.expires is not None else None
        history_entries = (self.encode_history(state, history, now),)
        return StateUpdate(task_id, state, self.encode(meta), history_entries, expires_at, reply_to)

    def encode_history(self, state: str, history: Mapping[str, Any] | None, now: float) -> bytes:
        """One history entry: the state, when, and what the worker adds (worker, pid, runtime...)."""
        return self.encode({"state": state, "timestamp": now, **(history or {})})

    def store(self, task_id: str, state: str, result: Any = None, **kwargs: Any) -> None:
        """Encode and write one state change."""
        self.write([self.make_update(task_id, state, result, **kwargs)])

    def get_meta(self, task_id: str) -> dict[str, Any]:
        """The task's meta; an unknown task is PENDING."""
        data = self.read([task_id]).get(task_id)
        if data is None:
            return {"status": states.PENDING, "result": None, "traceback": None, "task_id": task_id}
        meta = self.decode(data)
        if not isinstance(meta, dict) or "status" not in meta:
            raise DecodeError(f"stored result of task {task_id} is not a result record")
        return meta

    def get_history(self, task_id: str) -> list[dict[str, Any]]:
        return [self.decode(entry) for entry in self.read_history(task_id)]

    def wait_for(self, task_id: str, timeout: float | None = None) -> dict[str, Any]:
        """Block until the task is ready; its meta. TimeoutError past `timeout`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.waiter(task_id) as waiter:
            while True:
                meta = self.get_meta(task_id)
                if meta["status"] in states.READY_STATES:
                    return meta
                remaining = 3600.0 if deadline is None else deadline - time.monotonic()
                if remaining <= 0:
                    raise exceptions.TimeoutError(f"task {task_id} was not ready within {timeout} seconds")
                waiter.wait(remaining)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.display_url}>"

    @property
    def display_url(self) -> str:
        """The URL without its password, for logs and screens."""

        return redacted(self.url)


def result_value(meta: Mapping[str, Any]) -> Any:
    """The user-facing result: an exception instance for failure states."""
    value = meta.get("result")
    if meta.get("status") in states.EXCEPTION_STATES and isinstance(value, Mapping) and "exc_type" in value:
        return decode_exception(value)
    return value
