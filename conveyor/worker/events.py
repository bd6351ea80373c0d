"""Monitoring events (`-E`, `worker_send_task_events`): Celery's task-* event names and fields,
written to the broker with each batch's results."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from conveyor import states
from conveyor.execution import Outcome, short_repr
from conveyor.worker.hooks import Held, Hook

if TYPE_CHECKING:
    from conveyor.worker.worker import Worker

_EVENT_OF_STATE = {
    states.SUCCESS: "succeeded",
    states.FAILURE: "failed",
    states.RETRY: "retried",
    states.REVOKED: "revoked",
    states.IGNORED: "ignored",
    states.REJECTED: "rejected",
}


class TaskEvents(Hook):
    def start(self, worker: Worker) -> None:
        self.worker = worker

    def _send(self, kind: str, held: Held, **fields: Any) -> None:
        message = held.job.message
        event = {"type": f"task-{kind}", "uuid": message.id, "name": message.task,
                 "hostname": self.worker.hostname, "timestamp": time.time(), **fields}  # fmt: skip
        self.worker.ledger.progress.events.append(json.dumps(event, default=repr).encode())

    def received(self, held: Held) -> None:
        message = held.job.message
        self._send(
            "received", held, args=short_repr(message.args), kwargs=short_repr(message.kwargs),
            retries=message.retries, queue=held.delivery.queue, root_id=message.root_id,
            parent_id=message.parent_id,
        )  # fmt: skip

    def started(self, held: Held, pid: int) -> None:
        self._send("started", held, pid=pid)

    def finished(self, held: Held, outcome: Outcome) -> None:
        kind = _EVENT_OF_STATE.get(outcome.state, "failed")
        detail = {"result": outcome.summary} if kind == "succeeded" else {"exception": outcome.summary}
        self._send(kind, held, runtime=outcome.runtime, **detail)

    def refused(self, held: Held, state: str, error: BaseException) -> None:
        self._send(_EVENT_OF_STATE.get(state, "failed"), held, exception=repr(error))
