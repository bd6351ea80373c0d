"""The task log: a line when a task is received, and one when it ends."""

from __future__ import annotations

import logging

from conveyor import states
from conveyor.execution import Outcome
from conveyor.worker.hooks import Held, Hook

logger = logging.getLogger("conveyor.worker")


class TaskLog(Hook):
    def admit(self, arrivals: list[Held]) -> list[Held]:
        if logger.isEnabledFor(logging.INFO):
            for held in arrivals:
                logger.info("Task %s[%s] received", held.job.message.display_name, held.job.message.id)
        return arrivals

    def finished(self, held: Held, outcome: Outcome) -> None:
        message = held.job.message
        name, task_id = message.display_name, message.id
        if outcome.state == states.SUCCESS:
            logger.info("Task %s[%s] succeeded in %.2fs: %s", name, task_id, outcome.runtime, outcome.summary)
        elif outcome.state == states.RETRY:
            logger.info("Task %s[%s] retry: %s", name, task_id, outcome.summary)
        elif outcome.state == states.REVOKED:
            logger.warning("Task %s[%s] revoked: %s", name, task_id, outcome.summary)
        elif outcome.state == states.IGNORED:
            logger.info("Task %s[%s] ignored", name, task_id)
        elif outcome.state == states.REJECTED:
            requeue = "requeued" if outcome.meta.get("requeue") else "dead-lettered"
            logger.info("Task %s[%s] rejected (%s): %s", name, task_id, requeue, outcome.summary)
        elif outcome.expected:
            logger.info("Task %s[%s] raised expected: %s", name, task_id, outcome.summary)
        else:
            traceback = (outcome.traceback or "").rstrip()
            logger.error("Task %s[%s] raised unexpected: %s\n%s", name, task_id, outcome.summary, traceback)
