"""Every exception Conveyor raises, in one tree.

    ConveyorError
    ├── ImproperlyConfigured            bad settings or URLs
    ├── NotRegistered                   unknown task name
    ├── ContentDisallowed               serializer not in accept_content
    ├── DecodeError                     a message or result that cannot be decoded
    ├── EncodeError                     a result that cannot be serialized
    ├── BrokerError
    │   └── BrokerConnectionError       the broker cannot be reached
    ├── BackendError                    the result backend failed
    │   └── BackendConnectionError      the result backend cannot be reached
    ├── TimeoutError (also builtins.TimeoutError)
    ├── TaskError                       base of errors reported for a task
    │   ├── TaskRevokedError
    │   ├── TimeLimitExceeded
    │   ├── WorkerLostError
    │   └── MaxRetriesExceededError
    ├── SoftTimeLimitExceeded           raised inside a task: catchable
    ├── Retry                           control flow: the task asked to be retried
    ├── Ignore                          control flow: record nothing for this run
    └── Reject                          control flow: give the message back or dead-letter it

Foreign errors (sqlite3, redis, ...) are translated into these at the boundary of
the module that talks to that library.
"""

from __future__ import annotations

import builtins
from typing import Any


class ConveyorError(Exception):
    """Base class of every Conveyor error."""


class ImproperlyConfigured(ConveyorError, ValueError):
    """A setting, URL or option has a value Conveyor cannot use."""


class NotRegistered(ConveyorError, KeyError):
    """No task is registered under this name."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "task not registered"


class ContentDisallowed(ConveyorError):
    """A message uses a serializer that `accept_content` does not list."""


class DecodeError(ConveyorError):
    """A message or stored result could not be decoded."""


class EncodeError(ConveyorError, TypeError):
    """A value (a task's arguments or return value) cannot be serialized (Celery's name, kombu's
    `EncodeError`; a TypeError too, as the serializer's own error was before)."""


class BrokerError(ConveyorError):
    """The broker failed an operation."""


class BrokerConnectionError(BrokerError, ConnectionError):
    """The broker could not be reached (after any configured retries)."""


class BackendError(ConveyorError):
    """The result backend failed an operation."""


class BackendConnectionError(BackendError, ConnectionError):
    """The result backend could not be reached."""


class TimeoutError(ConveyorError, builtins.TimeoutError):  # noqa: A001 - Celery's name
    """`AsyncResult.get` waited longer than its timeout. The task keeps running."""


class TaskError(ConveyorError):
    """Base class of errors recorded as a task's outcome."""


class TaskRevokedError(TaskError):
    """The task was revoked (or expired) and did not complete."""


class TimeLimitExceeded(TaskError):
    """The task ran past its hard time limit and was killed."""


class WorkerLostError(TaskError):
    """The process running the task died."""


class ChordError(TaskError):
    """A chord's body did not run: one of its header tasks failed."""


class MaxRetriesExceededError(TaskError):
    """The task asked to retry but has used all of its retries."""


class SoftTimeLimitExceeded(ConveyorError):
    """Raised inside a task when it passes its soft time limit."""


class Retry(ConveyorError):
    """Raised by `Task.retry()` to end this attempt; the worker records RETRY."""

    def __init__(self, message: str | None = None, exc: BaseException | None = None, when: Any = None) -> None:
        self.message = message
        self.exc = exc
        self.when = when
        super().__init__(message, exc, when)

    def __str__(self) -> str:
        if self.message:
            return self.message
        reason = f"{self.exc!r}" if self.exc is not None else "retry requested"
        return f"Retry in {self.when}s: {reason}" if self.when is not None else reason


class Ignore(ConveyorError):
    """Raised by a task to end its run without recording a state (it may have set one itself)."""


class Reject(ConveyorError):
    """Raised by a task to refuse its message: `requeue=True` gives it back to the queue, else it
    goes to the dead letters with `reason`. Meant for `acks_late` tasks (an early-acked message
    is already gone)."""

    def __init__(self, reason: object = None, requeue: bool = False) -> None:
        self.reason = reason
        self.requeue = requeue
        super().__init__(reason, requeue)


class ExceptionInfo:
    """An exception with its traceback, as task hooks receive it (`einfo`, Celery's shape)."""

    def __init__(self, exception: BaseException) -> None:
        import traceback

        self.exception = exception
        self.type = type(exception)
        self.tb = exception.__traceback__
        self.traceback = "".join(traceback.format_exception(exception))

    def __str__(self) -> str:
        return self.traceback
