"""Logging for task code, at Celery's path: `from conveyor.utils.log import get_task_logger`."""

from __future__ import annotations

import logging

from conveyor.task import current_request


class TaskContext(logging.Filter):
    """Adds the running task's `task_id` and `task_name` to each record (`???` outside a task),
    so formats such as Celery's `[%(task_name)s(%(task_id)s)] %(message)s` work."""

    def filter(self, record: logging.LogRecord) -> bool:
        request = current_request()
        record.task_id = (request.id if request else None) or "???"
        record.task_name = (request.task if request else None) or "???"
        return True


_CONTEXT = TaskContext()


def get_task_logger(name: str) -> logging.Logger:
    """A logger for task modules whose records carry the running task's id and name."""
    logger = logging.getLogger(name)
    if _CONTEXT not in logger.filters:
        logger.addFilter(_CONTEXT)
    return logger


def get_logger(name: str) -> logging.Logger:
    """A plain logger (Celery's `get_logger`)."""
    return logging.getLogger(name)


__all__ = ["TaskContext", "get_logger", "get_task_logger"]
