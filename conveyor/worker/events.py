"""Monitoring events (`-E`, `worker_send_task_events`): Celery's task-* event names and
fields, written to the broker with each batch's results (the dashboard's task list and Flower's API).

A task that ends within `GRACE_SECONDS` of its arrival has one event, its end, which carries
when it was received and started: under load that is one event per task, not three. One
still waiting or running at the end of a batch past the grace gets its `task-received` (and
`task-started`) of its own, so a long task shows as received and running while it runs.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import orjson

from conveyor import states
from conveyor.execution import Outcome, short_repr
from conveyor.worker.hooks import Held, Hook
from conveyor.worker.progress import STARTED_GRACE_SECONDS

if TYPE_CHECKING:
    from conveyor.worker.worker import Worker

#: A task's received and started events wait this long to be folded into its end.
GRACE_SECONDS = STARTED_GRACE_SECONDS

_EVENT_OF_STATE = {
    states.SUCCESS: "succeeded",
    states.FAILURE: "failed",
    states.RETRY: "retried",
    states.REVOKED: "revoked",
    states.IGNORED: "ignored",
    states.REJECTED: "rejected",
}


class _Pending:
    """A held task's events not written yet."""

    __slots__ = ("held", "pid", "received", "received_sent", "started", "started_sent")

    def __init__(self, held: Held, received: float) -> None:
        self.held, self.received = held, received
        self.started: float | None = None
        self.pid: int | None = None
        self.received_sent = self.started_sent = False


class TaskEvents(Hook):
    def __init__(self) -> None:
        self._pending: dict[int, _Pending] = {}

    def start(self, worker: Worker) -> None:
        self.worker = worker
        self.hostname = worker.hostname
        self.events = worker.ledger.progress

    def _send(self, kind: str, held: Held, at: float, fields: dict[str, Any]) -> None:
        message = held.job.message
        event = {"type": f"task-{kind}", "uuid": message.id, "name": message.task, "hostname": self.hostname,
                 "timestamp": at, **fields}  # fmt: skip
        self.events.events.append(orjson.dumps(event, default=repr))

    @staticmethod
    def _arrival(held: Held) -> dict[str, Any]:
        message = held.job.message
        return {"args": short_repr(message.args), "kwargs": short_repr(message.kwargs), "retries": message.retries,
                "queue": held.delivery.queue, "root_id": message.root_id, "parent_id": message.parent_id}  # fmt: skip

    def received(self, held: Held) -> None:
        self._pending[held.job.id] = _Pending(held, time.time())

    def started(self, held: Held, pid: int) -> None:
        pending = self._pending.get(held.job.id)
        if pending is not None:
            pending.started, pending.pid = held.started_at or time.time(), pid

    def finished(self, held: Held, outcome: Outcome) -> None:
        kind = _EVENT_OF_STATE.get(outcome.state, "failed")
        fields: dict[str, Any] = {"runtime": outcome.runtime}
        fields["result" if kind == "succeeded" else "exception"] = outcome.summary
        pending = self._pending.pop(held.job.id, None)
        if pending is not None:
            if not pending.received_sent:
                fields.update(self._arrival(held), received=pending.received)
            if not pending.started_sent and pending.started is not None:
                fields.update(started=pending.started, pid=pending.pid)
        self._send(kind, held, time.time(), fields)

    def refused(self, held: Held, state: str, error: BaseException) -> None:
        now = time.time()
        self._send(_EVENT_OF_STATE.get(state, "failed"), held, now, {**self._arrival(held), "received": now,
                                                                      "exception": repr(error)})  # fmt: skip

    def flush(self) -> None:
        """Past the grace, a task still waiting or running has its arrival (and start) written."""
        if not self._pending:
            return
        due, held = time.time() - GRACE_SECONDS, self.worker.held
        for job_id in [j for j in self._pending if j not in held]:
            del self._pending[job_id]  # given back unrun (shutdown, a lost process): no end to write
        for pending in self._pending.values():
            if not pending.received_sent and pending.received <= due:
                pending.received_sent = True
                self._send("received", pending.held, pending.received, self._arrival(pending.held))
            if not pending.started_sent and pending.started is not None and pending.started <= due:
                pending.started_sent = True
                self._send("started", pending.held, pending.started, {"pid": pending.pid})
