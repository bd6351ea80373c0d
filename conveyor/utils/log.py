"""Logging at Celery's path: task loggers (`get_task_logger`) and the set-up of the worker's
and beat's logging from Celery's settings and signals."""

from __future__ import annotations

import io
import logging
import os
import sys
from typing import TYPE_CHECKING, Any, TextIO

from conveyor import signals
from conveyor.task import current_request

if TYPE_CHECKING:
    from conveyor.config import Settings

#: The parent of every task logger: its handler writes `worker_task_log_format`.
TASK_LOGGER = "conveyor.task"
#: What tasks print, when `worker_redirect_stdouts` is on.
REDIRECTED_LOGGER = "conveyor.redirected"

_COLOURS = {"DEBUG": "34", "WARNING": "33", "ERROR": "31", "CRITICAL": "35"}


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
    """A logger for task modules: its records carry the running task's id and name, and go
    out through the task logger's handler (`worker_task_log_format`), as in Celery."""
    logger = logging.getLogger(name)
    if _CONTEXT not in logger.filters:
        logger.addFilter(_CONTEXT)
    if name != TASK_LOGGER:
        logger.parent = logging.getLogger(TASK_LOGGER)
    return logger


def get_logger(name: str) -> logging.Logger:
    """A plain logger (Celery's `get_logger`)."""
    return logging.getLogger(name)


class ColourFormatter(logging.Formatter):
    """Lines coloured by level (ANSI), for a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        colour = _COLOURS.get(record.levelname)
        return f"\x1b[{colour}m{text}\x1b[0m" if colour else text


class LoggingProxy(io.TextIOBase):
    """A file that logs each line written to it (`print()` in a task, with redirected stdouts)."""

    def __init__(self, logger: logging.Logger, level: int) -> None:
        self.logger, self.level = logger, level
        self._partial = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            if line.strip():
                self.logger.log(self.level, line)
        return len(text)

    def flush(self) -> None:
        if self._partial.strip():
            self.logger.log(self.level, self._partial)
        self._partial = ""

    def isatty(self) -> bool:
        return False


def setup_logging(
    conf: Settings,
    loglevel: str,
    logfile: str | None = None,
    colorize: bool | None = None,
) -> bool:
    """The logging of `conveyor worker` and `conveyor beat`, as Celery sets it up.

    A `setup_logging` receiver takes it over entirely. Otherwise the root logger gets one
    handler (to `logfile`, else stderr) in `worker_log_format`, after its own handlers are
    removed (`worker_hijack_root_logger`; when off, a root logger with handlers is left as
    it is); task loggers get their own, in `worker_task_log_format`; and
    `after_setup_logger` and `after_setup_task_logger` are sent. True when a receiver took
    it over.
    """
    level = loglevel.upper()
    stream: TextIO = sys.stderr
    if colorize is None:
        colorize = conf.worker_log_color
    if colorize is None:
        colorize = logfile is None and stream.isatty() and not os.environ.get("NO_COLOR")
    described: dict[str, Any] = {  # the level as a number, as Celery sends it
        "loglevel": logging.getLevelName(level), "logfile": logfile, "format": conf.worker_log_format,
        "colorize": colorize,
    }  # fmt: skip
    if signals.setup_logging.receivers:
        signals.setup_logging.send(None, **described)
        return True
    root = logging.getLogger()
    if conf.worker_hijack_root_logger:
        root.handlers[:] = []
    if not root.handlers:
        root.addHandler(_handler(logfile, conf.worker_log_format, conf.worker_log_datefmt, colorize))
    root.setLevel(level)
    signals.after_setup_logger.send(None, logger=root, **described)
    task_logger = logging.getLogger(TASK_LOGGER)
    for replaced in task_logger.handlers:  # Conveyor's own, from an earlier set-up
        replaced.close()
    task_logger.handlers[:] = [_handler(logfile, conf.worker_task_log_format, conf.worker_task_log_datefmt, colorize)]
    task_logger.setLevel(level)
    task_logger.propagate = False
    signals.after_setup_task_logger.send(
        None, logger=task_logger, **{**described, "format": conf.worker_task_log_format}
    )
    return False


def redirect_stdouts(conf: Settings) -> None:
    """With `worker_redirect_stdouts`, what is printed from now on is logged (to the logger
    `conveyor.redirected`, at `worker_redirect_stdouts_level`): a worker's tasks' output then
    reads as its other lines do."""
    if conf.worker_redirect_stdouts:
        level = logging.getLevelName(conf.worker_redirect_stdouts_level)
        sys.stdout = sys.stderr = LoggingProxy(logging.getLogger(REDIRECTED_LOGGER), level)


def _handler(logfile: str | None, fmt: str, datefmt: str | None, colorize: bool) -> logging.Handler:
    handler: logging.Handler = logging.FileHandler(logfile) if logfile else logging.StreamHandler(sys.stderr)
    handler.setFormatter((ColourFormatter if colorize else logging.Formatter)(fmt, datefmt))
    handler.addFilter(_CONTEXT)
    return handler


__all__ = ["LoggingProxy", "TaskContext", "get_logger", "get_task_logger", "redirect_stdouts", "setup_logging"]
