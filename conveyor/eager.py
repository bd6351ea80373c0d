"""Eager execution (`Task.apply`, `task_always_eager`): a task run in the caller's process, as a worker would."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from conveyor import messages, states
from conveyor.backends.base import result_value
from conveyor.backends.memory import MemoryBackend
from conveyor.execution import Job, execute
from conveyor.result import AsyncResult, EagerResult

if TYPE_CHECKING:
    from conveyor.task import Task


def run_eagerly(
    task: Task[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any], task_id: str | None, options: dict[str, Any]
) -> AsyncResult[Any]:
    """`Task.apply`: run in this process with the arguments round-tripped through the serializer."""
    app = task.app
    call = app.producer.options(options, task)
    call.task_id = task_id
    message, queue = app.producer.message(task.name, args, kwargs, call)
    message = messages.decode(message.encode(call.serializer), None)
    job = Job(0, message, queue, hostname="eager", redelivered=False)
    # Eager results are encoded as a worker would, but kept in the result object only.
    backend = MemoryBackend(
        f"memory://eager-{message.id}",
        serializer=app.conf.result_serializer,
        accept=app.conf.result_accept_content or app.conf.accept_content,
    )
    outcome = execute(app, job, lambda pid: None, eager=True, backend=backend)
    meta: dict[str, Any] = {"status": outcome.state, "task_id": message.id, "traceback": outcome.traceback}
    if outcome.updates:
        meta = backend.decode(outcome.updates[-1].meta)
    else:
        meta["result"] = None
    if outcome.state == states.FAILURE and app.conf.task_eager_propagates:
        raise result_value(meta)
    return EagerResult(message.id, app, meta, task_name=task.name)
