"""Celery's `celery.app.task` path: `from conveyor.app.task import Task`."""

from conveyor.task import Context, Task

__all__ = ["Context", "Task"]
