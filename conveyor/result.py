"""AsyncResult: a handle on one task's state and result in the result backend."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from conveyor import states
from conveyor.backends.base import result_value
from conveyor.current import current_app

if TYPE_CHECKING:
    from conveyor.app import Conveyor
    from conveyor.backends.base import ResultBackend

R = TypeVar("R")

#: Set while a worker runs a task, so `get()` can refuse to block inside one.
in_task: ContextVar[bool] = ContextVar("conveyor_in_task", default=False)


@contextmanager
def allow_join_result() -> Iterator[None]:
    """Celery's escape hatch: inside it, a task may wait on another's result with `get()` (which
    can deadlock a worker whose pool is full of tasks waiting on each other)."""
    token = in_task.set(False)
    try:
        yield
    finally:
        in_task.reset(token)


class AsyncResult(Generic[R]):
    """The state and result of a task, fetched from the result backend on access."""

    def __init__(
        self,
        id: str,  # noqa: A002 - Celery's name
        app: Conveyor | None = None,
        *,
        task_name: str | None = None,
        ignored: bool = False,
    ) -> None:
        if app is None:
            app = current_app()
        self.id = id
        self.app = app
        self.task_name = task_name
        self.ignored = ignored
        #: The result this one's task was chained after (`a.s() | b.s()`: b's parent is a's).
        self.parent: AsyncResult[Any] | GroupResult | None = None
        self._ready_meta: dict[str, Any] | None = None

    @property
    def task_id(self) -> str:
        return self.id

    def _meta(self) -> dict[str, Any]:
        if self._ready_meta is not None:
            return self._ready_meta
        meta = self.app.backend.get_meta(self.id)
        if meta["status"] in states.READY_STATES:
            self._ready_meta = meta  # a ready result never changes again
        return meta

    @property
    def state(self) -> str:
        """PENDING, STARTED, SUCCESS, FAILURE, RETRY, REVOKED or a custom state."""
        return str(self._meta()["status"])

    status = state

    @property
    def result(self) -> Any:
        """The return value; the exception for FAILURE; the meta dict for custom states."""
        return result_value(self._meta())

    info = result

    @property
    def traceback(self) -> str | None:
        value = self._meta().get("traceback")
        return str(value) if value is not None else None

    @property
    def date_done(self) -> datetime | None:
        value = self._meta().get("date_done")
        return datetime.fromisoformat(value) if value else None

    @property
    def name(self) -> str | None:
        """The task name (stored when `result_extended` is on)."""
        return self._meta().get("name") or self.task_name

    @property
    def args(self) -> Any:
        return self._meta().get("args")

    @property
    def kwargs(self) -> Any:
        return self._meta().get("kwargs")

    @property
    def worker(self) -> str | None:
        return self._meta().get("worker")

    @property
    def retries(self) -> int | None:
        return self._meta().get("retries")

    @property
    def queue(self) -> str | None:
        return self._meta().get("queue")

    def ready(self) -> bool:
        """True once the task ended: SUCCESS, FAILURE or REVOKED."""
        return self.state in states.READY_STATES

    def successful(self) -> bool:
        return self.state == states.SUCCESS

    def failed(self) -> bool:
        return self.state == states.FAILURE

    def get(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        interval: float = 0.5,
        disable_sync_subtasks: bool = True,
    ) -> R:
        """Wait for the task to finish and return its result.

        Raises `conveyor.exceptions.TimeoutError` after `timeout` seconds (the
        task keeps running). A failed or revoked task re-raises its exception
        unless `propagate=False`, when the exception is returned. `interval`
        is accepted for Celery compatibility: Conveyor's backends wake the
        caller when the result is written instead of polling.
        """
        if disable_sync_subtasks and self._ready_meta is None and in_task.get():
            raise RuntimeError(
                "Never call result.get() within a task: it can deadlock the worker "
                "(pass disable_sync_subtasks=False if you must)"
            )
        if self.ignored:
            return None  # type: ignore[return-value]
        if self._ready_meta is None:
            self.app.confirm_published()  # a message Redis refused would otherwise be waited for in vain
        meta = self._ready_meta or self.app.backend.wait_for(self.id, timeout)
        self._ready_meta = meta
        value = result_value(meta)
        if propagate and meta["status"] in states.PROPAGATE_STATES and isinstance(value, BaseException):
            raise value
        return value  # type: ignore[no-any-return]

    wait = get

    def revoke(self, terminate: bool = False, signal: str | int | None = None) -> None:
        """Revoke the task: it will not run; with terminate=True a running task is stopped (see control.py)."""
        self._ready_meta = None
        self.app.control.revoke(self.id, terminate=terminate, signal=signal)

    def forget(self) -> None:
        """Delete the stored result and history."""
        self._ready_meta = None
        self.app.backend.delete([self.id])

    @property
    def scoreboard(self) -> dict[str, Any]:
        """The task's recorded history, for debugging.

        `history` lists every state with its timestamp (and worker, pid,
        retries, runtime where known); the summary keys come from the latest
        entries.
        """
        meta = self._meta()
        history = self.app.backend.get_history(self.id)
        board: dict[str, Any] = {
            "task_id": self.id,
            "name": meta.get("name") or self.task_name,
            "state": meta["status"],
            "result": meta.get("result"),
            "traceback": meta.get("traceback"),
            "date_done": meta.get("date_done"),
            "worker": None,
            "retries": 0,
            "runtime": None,
            "history": history,
        }
        for entry in history:
            for key in ("worker", "retries", "runtime", "name", "shadow"):
                if entry.get(key) is not None:
                    board[key] = entry[key]
        return board

    @property
    def children(self) -> list[AsyncResult[Any]] | None:
        """The tasks this task sent while it ran, once it has ended (None before)."""
        meta = self._meta()
        if meta.get("status") not in states.READY_STATES:
            return None
        found: list[AsyncResult[Any]] = []
        for child in meta.get("children") or ():
            try:
                (task_id, _), _ = child
            except (TypeError, ValueError):
                continue  # not a child in Celery's form
            found.append(AsyncResult(str(task_id), self.app))
        return found

    def collect(self, intermediate: bool = False, **options: Any) -> Iterator[tuple[AsyncResult[Any], Any]]:
        """(result, value) for this task and then, depth first, every task it sent and they sent,
        each waited for (`get(**options)`)."""
        pending: list[AsyncResult[Any]] = [self]
        while pending:
            result = pending.pop(0)
            value = result.get(**options)
            yield result, value
            pending[:0] = result.children or []

    def __eq__(self, other: object) -> bool:
        if isinstance(other, AsyncResult):
            return self.id == other.id
        return isinstance(other, str) and self.id == other

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        return f"<AsyncResult: {self.id}>"

    def __str__(self) -> str:
        return self.id


class ResultSet:
    """Several results, read and waited for together (Celery's `ResultSet`)."""

    def __init__(self, results: list[AsyncResult[Any]], app: Conveyor | None = None, **kwargs: Any) -> None:
        self.results = list(results)
        self.app = app or (self.results[0].app if self.results else None)

    def add(self, result: AsyncResult[Any]) -> None:
        """Add a result to the set (once)."""
        if result not in self.results:
            self.results.append(result)

    def discard(self, result: AsyncResult[Any]) -> None:
        """Remove a result from the set, if there."""
        if result in self.results:
            self.results.remove(result)

    def _metas(self) -> list[dict[str, Any]]:
        """Every member's meta, in one backend read (ready ones are kept, as AsyncResult does)."""
        current = {r.id: r._ready_meta for r in self.results if r._ready_meta is not None}
        missing = [r.id for r in self.results if r._ready_meta is None]
        if missing and self.app is not None:
            backend = self.app.backend
            current.update((task_id, backend.decode(data)) for task_id, data in backend.read(missing).items())
            for result in self.results:
                meta = current.get(result.id)
                if meta is not None and meta.get("status") in states.READY_STATES:
                    result._ready_meta = meta
        return [current.get(r.id) or {"status": states.PENDING} for r in self.results]

    def ready(self) -> bool:
        """True once every task of the group has ended."""
        return all(meta["status"] in states.READY_STATES for meta in self._metas())

    def successful(self) -> bool:
        return all(meta["status"] == states.SUCCESS for meta in self._metas())

    def failed(self) -> bool:
        return any(meta["status"] == states.FAILURE for meta in self._metas())

    def completed_count(self) -> int:
        """How many tasks of the group succeeded."""
        return sum(1 for meta in self._metas() if meta["status"] == states.SUCCESS)

    def get(self, timeout: float | None = None, propagate: bool = True, **options: Any) -> list[Any]:
        """Every task's result, in order; the first failure re-raised (unless propagate=False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        values = []
        for result in self.results:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            values.append(result.get(timeout=remaining, propagate=propagate, **options))
        return values

    join = get

    def revoke(self, terminate: bool = False, signal: str | int | None = None) -> None:
        """Revoke every task of the group, in one broker call."""
        if self.app is not None and self.results:
            for result in self.results:
                result._ready_meta = None
            self.app.control.revoke([r.id for r in self.results], terminate=terminate, signal=signal)

    def forget(self) -> None:
        if self.app is not None:
            self.app.backend.delete([r.id for r in self.results])

    def __iter__(self) -> Iterator[AsyncResult[Any]]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, index: int) -> AsyncResult[Any]:
        return self.results[index]

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: [{', '.join(r.id for r in self.results)}]>"


#: The key a saved group's member ids are stored under in the result backend.
GROUP_KEY = "conveyor-group-meta-{}"


class GroupResult(ResultSet):
    """The results of a group's tasks, in the group's order."""

    def __init__(self, id: str, results: list[AsyncResult[Any]], app: Conveyor | None = None, **kwargs: Any) -> None:  # noqa: A002
        super().__init__(results, app)
        self.id = id

    def save(self, backend: ResultBackend | None = None) -> GroupResult:
        """Store the group's member ids in the result backend, so `GroupResult.restore(id)` finds it."""
        backend = backend or self._backend()
        backend.write([backend.make_update(GROUP_KEY.format(self.id), states.SUCCESS, [r.id for r in self.results])])
        return self

    @classmethod
    def restore(
        cls,
        id: str,  # noqa: A002 - Celery's name
        backend: ResultBackend | None = None,
        app: Conveyor | None = None,
    ) -> GroupResult | None:
        """The group saved with `save()` (None when it was not saved, or has expired)."""
        app = app or current_app()
        backend = backend or app.backend
        data = backend.read([GROUP_KEY.format(id)]).get(GROUP_KEY.format(id))
        if data is None:
            return None
        return cls(id, [AsyncResult(task_id, app) for task_id in backend.decode(data)["result"]], app)

    def delete(self, backend: ResultBackend | None = None) -> None:
        """Remove what `save()` stored."""
        (backend or self._backend()).delete([GROUP_KEY.format(self.id)])

    def _backend(self) -> ResultBackend:
        return (self.app or current_app()).backend

    def __repr__(self) -> str:
        return f"<GroupResult: {self.id} [{', '.join(r.id for r in self.results)}]>"


class EagerResult(AsyncResult[R]):
    """The result of a task run in the caller's process (`apply`, `task_always_eager`)."""

    def __init__(self, id: str, app: Conveyor, meta: dict[str, Any], task_name: str | None = None) -> None:  # noqa: A002
        super().__init__(id, app, task_name=task_name)
        self._ready_meta = meta
        self._eager_meta = meta

    def _meta(self) -> dict[str, Any]:
        return self._eager_meta

    @property
    def scoreboard(self) -> dict[str, Any]:
        return {
            "task_id": self.id,
            "name": self.task_name,
            "state": self.state,
            "history": self._eager_meta.get("history", []),
        }

    def forget(self) -> None:
        pass
