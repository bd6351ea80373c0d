"""Celery's `celery.app.log` path: `TaskFormatter`, for handlers projects add to task loggers."""

from __future__ import annotations

import logging

from conveyor.utils.log import ColourFormatter, TaskContext

_CONTEXT = TaskContext()


class TaskFormatter(ColourFormatter):
    """A formatter whose format may name `%(task_id)s` and `%(task_name)s` (`???` outside a task),
    as in `handler.setFormatter(TaskFormatter("%(task_name)s[%(task_id)s]: %(message)s"))`;
    lines are coloured by level unless `use_color=False` (Celery's arguments)."""

    def __init__(self, fmt: str | None = None, use_color: bool = True) -> None:
        super().__init__(fmt)
        self.use_color = use_color

    def format(self, record: logging.LogRecord) -> str:
        _CONTEXT.filter(record)
        return super().format(record) if self.use_color else logging.Formatter.format(self, record)


__all__ = ["TaskFormatter"]
