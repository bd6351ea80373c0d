"""Signals: Celery's hooks into a task's life, with Celery's names and arguments.

    from conveyor.signals import task_prerun

    @task_prerun.connect
    def log_start(sender, task_id, task, args, kwargs, **_):
        ...

Receivers are called in the order connected, in the thread (or prefork
child, or event-loop task) where the thing happens. A receiver that raises is
logged and skipped: a hook never breaks a publish or a task. Receivers take
`**kwargs`, so that later arguments do not break them. A signal with no
receivers costs one truthiness check.

Signals, their sender, their other arguments, and when they are sent:

- `before_task_publish` (task name; `headers`, `routing_key`, `body`): before
  a message is encoded; what a receiver adds to `headers` travels with it.
- `after_task_publish` (task name; `headers`, `routing_key`): once the broker
  has the message.
- `task_prerun` (task; `task_id`, `task`, `args`, `kwargs`): before the task
  runs, with `task.request` set.
- `task_postrun` (task; `task_id`, `task`, `args`, `kwargs`, `retval`,
  `state`): after it ran, whatever the outcome.
- `task_success` (task; `result`), `task_failure` (task; `task_id`,
  `exception`, `args`, `kwargs`, `traceback`), `task_retry` (task; `request`,
  `reason`): after it ran, before `task_postrun`.
- `worker_ready`, `worker_shutdown` (the worker): consuming; stopped.
- `worker_process_init` (None): in a prefork child, before its first task.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

logger = logging.getLogger("conveyor.signals")

Receiver = TypeVar("Receiver", bound=Callable[..., Any])


class Signal:
    """A hook point: `connect` receivers, `send` calls them all."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.receivers: list[Callable[..., Any]] = []
        self._lock = threading.Lock()

    def connect(self, receiver: Receiver) -> Receiver:
        """Add a receiver (usable as a decorator); connecting one twice keeps one."""
        with self._lock:
            if receiver not in self.receivers:
                # A new list, not an append: a send going on meanwhile keeps the list it started with.
                self.receivers = [*self.receivers, receiver]
        return receiver

    def disconnect(self, receiver: Callable[..., Any]) -> None:
        with self._lock:
            self.receivers = [r for r in self.receivers if r != receiver]

    def send(self, sender: Any, **kwargs: Any) -> list[tuple[Callable[..., Any], Any]]:
        """Call every receiver with `sender` and `kwargs`; [(receiver, its return value or exception)]."""
        replies: list[tuple[Callable[..., Any], Any]] = []
        for receiver in self.receivers:
            try:
                replies.append((receiver, receiver(sender=sender, signal=self, **kwargs)))
            except Exception as exc:
                logger.exception("Receiver %r of signal %s raised", receiver, self.name)
                replies.append((receiver, exc))
        return replies

    def __repr__(self) -> str:
        return f"<Signal {self.name}: {len(self.receivers)} receivers>"


before_task_publish = Signal("before_task_publish")
after_task_publish = Signal("after_task_publish")
task_prerun = Signal("task_prerun")
task_postrun = Signal("task_postrun")
task_success = Signal("task_success")
task_failure = Signal("task_failure")
task_retry = Signal("task_retry")
worker_ready = Signal("worker_ready")
worker_shutdown = Signal("worker_shutdown")
worker_process_init = Signal("worker_process_init")
