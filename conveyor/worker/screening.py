"""What a worker checks before it runs a task: its delivery count, its name, its expiry and its eta."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from conveyor import signals, states
from conveyor.exceptions import NotRegistered, TaskRevokedError, WorkerLostError
from conveyor.execution import context_for
from conveyor.messages import utcnow
from conveyor.worker.hooks import Held, Hook

if TYPE_CHECKING:
    from conveyor.worker.worker import Worker

logger = logging.getLogger("conveyor.worker")

#: A message delivered this much before its eta is sent back to wait for the rest.
EARLY_TOLERANCE_SECONDS = 1.0


class Screening(Hook):
    def start(self, worker: Worker) -> None:
        self.worker = worker
        self.app = worker.app
        self.max_redeliveries = worker.app.conf.task_max_redeliveries
        default = self.app.conf.task_default_queue
        if default not in worker.queues:
            logger.warning(
                "This worker does not consume the default queue %r (it consumes %s): tasks with no "
                "route will wait there until a worker consumes it (-Q %s)",
                default, ", ".join(worker.queues), default,
            )  # fmt: skip

    def admit(self, arrivals: list[Held]) -> list[Held]:
        return [held for held in arrivals if self._admits(held)]

    def _admits(self, held: Held) -> bool:
        message, delivery, worker = held.job.message, held.delivery, self.worker
        if delivery.attempts - 1 > self.max_redeliveries:
            reason = (
                f"delivered {delivery.attempts} times and every run died before finishing "
                f"(task_max_redeliveries={self.max_redeliveries})"
            )
            logger.error("Task %s[%s] %s: moved to the dead letters", message.display_name, message.id, reason)
            worker.ledger.refuse(held, states.FAILURE, WorkerLostError(reason), dead_letter=reason)
            return False
        if message.task not in self.app.tasks:
            registered = ", ".join(sorted(t for t in self.app.tasks if not t.startswith("conveyor."))) or "none"
            error = NotRegistered(
                f"Task {message.task!r} is not registered in this worker (registered: {registered});"
                " is the module in -A, imports or include?"
            )
            logger.error("Received unregistered task of type %r: %s", message.task, error)
            signals.task_unknown.send(None, name=message.task, id=message.id, message=message, exc=error)
            worker.ledger.refuse(held, states.FAILURE, error)
            return False
        if message.is_expired():
            logger.warning("Task %s[%s] expired at %s: not run", message.display_name, message.id, message.expires)
            worker.ledger.signal_revoked(held, expired=True)
            worker.ledger.refuse(held, states.REVOKED, TaskRevokedError(f"task expired at {message.expires}"))
            return False
        early = (message.eta - utcnow()).total_seconds() if message.eta is not None else 0.0
        if early > EARLY_TOLERANCE_SECONDS:
            # Delivered before its eta: a broker whose longest delay is shorter (RabbitMQ's
            # TTLs end at 49 days) sends it on its way again for the rest.
            worker.ledger.defer(held, early)
            return False
        return True

    def received(self, held: Held) -> None:
        if signals.task_received.receivers:
            signals.task_received.send(self.worker, request=context_for(held.job))
