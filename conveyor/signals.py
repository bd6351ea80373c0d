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
- `task_received` (the worker; `request`): a task handed to the pool.
- `task_revoked` (task; `request`, `terminated`, `signum`, `expired`): a task
  not run (revoked or expired) or terminated.
- `task_unknown` (None; `name`, `id`, `message`, `exc`): a message for a task
  this worker does not have.
- `task_rejected` (None; `message`, `exc`): a message the worker cannot read
  (not a task message, or an invalid one; `message` is the delivery, `exc`
  the reason), as Celery sends it for unknown and invalid messages.
- `task_internal_error` (task; `task_id`, `args`, `kwargs`, `request`,
  `exception`, `traceback`, `einfo`): a step of Conveyor's own after the
  task's code (a hook such as `on_success`, a callback, storing the result)
  failed; the job is then handled as lost.
- `celeryd_init` (the worker's hostname; `instance`, `conf`, `options`): the
  worker command starts; `celeryd_after_setup` (hostname; `instance`,
  `conf`): its queues are chosen.
- `worker_init` (the worker): before it starts consuming.
- `worker_ready`, `worker_shutdown` (the worker): consuming; stopped.
- `worker_shutting_down` (hostname; `sig`, `how`, `exitcode`): a warm or
  cold shutdown begins.
- `heartbeat_sent` (the worker): each heartbeat.
- `worker_process_init` (None): in a prefork child, before its first task;
  `worker_process_shutdown` (None; `pid`, `exitcode`): as it exits.
- `beat_init` (the beat, as it starts: alone or inside a worker), `beat_embedded_init` (then, inside a worker).
- `import_modules` (the app): the task modules are imported.
- `setup_logging` (None; `loglevel`, `logfile`, `format`, `colorize`): a
  receiver takes over the command line's logging configuration entirely;
  without one, Conveyor configures it and sends `after_setup_logger` and
  `after_setup_task_logger` (None; `logger`, `loglevel`, `logfile`, `format`,
  `colorize`).
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
task_received = Signal("task_received")
task_revoked = Signal("task_revoked")
task_unknown = Signal("task_unknown")
task_rejected = Signal("task_rejected")
task_internal_error = Signal("task_internal_error")
celeryd_init = Signal("celeryd_init")
celeryd_after_setup = Signal("celeryd_after_setup")
worker_init = Signal("worker_init")
worker_shutting_down = Signal("worker_shutting_down")
heartbeat_sent = Signal("heartbeat_sent")
worker_process_shutdown = Signal("worker_process_shutdown")
beat_init = Signal("beat_init")
beat_embedded_init = Signal("beat_embedded_init")
import_modules = Signal("import_modules")
setup_logging = Signal("setup_logging")
after_setup_logger = Signal("after_setup_logger")
after_setup_task_logger = Signal("after_setup_task_logger")
