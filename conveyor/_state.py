"""Celery's `celery._state` path: the current app and the task running now."""

from __future__ import annotations

from typing import Any

from conveyor.current import current_app, get_current_app
from conveyor.task import Task, current_request


def get_current_task() -> Task[Any, Any] | None:
    """The task whose run is in progress on this thread (None outside one)."""
    request = current_request()
    if request is None or not request.task:
        return None
    return get_current_app().tasks.get(request.task)


class _CurrentTask:
    """`current_task`: the running task, as Celery's proxy (falsy outside a task)."""

    def __getattr__(self, name: str) -> Any:
        task = get_current_task()
        if task is None:
            raise AttributeError(f"no task is running, so current_task has no {name!r}")
        return getattr(task, name)

    def __bool__(self) -> bool:
        return get_current_task() is not None

    def __repr__(self) -> str:
        return f"<current_task: {get_current_task()!r}>"


current_task = _CurrentTask()

__all__ = ["current_app", "current_task", "get_current_app", "get_current_task"]
