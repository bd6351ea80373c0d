"""Revoked tasks do not run; running ones revoked with terminate=True are stopped.

Revocations live in the broker's state store (`control.py`), so every worker,
including one started later, sees them. Arrivals are checked in one query per
batch (skipped for deliveries the broker already saw unrevoked); running tasks
are checked every tick.
"""

from __future__ import annotations

import json
import logging
import signal
from collections import deque
from typing import TYPE_CHECKING

from conveyor import states
from conveyor.control import trusted
from conveyor.exceptions import BrokerError, TaskRevokedError
from conveyor.worker.hooks import Held, Hook

if TYPE_CHECKING:
    from conveyor.worker.worker import Worker

logger = logging.getLogger("conveyor.worker")


#: How many revoked task ids a worker remembers for `inspect revoked`.
SEEN_KEPT = 10_000


class Revocations(Hook):
    def __init__(self) -> None:
        self.seen: deque[str] = deque(maxlen=SEEN_KEPT)
        """The revoked tasks this worker met, newest last."""

    def start(self, worker: Worker) -> None:
        self.worker = worker

    def admit(self, arrivals: list[Held]) -> list[Held]:
        ids = [h.job.message.id for h in arrivals if not h.delivery.not_revoked]
        if not ids:
            return arrivals
        try:
            revoked = self._trusted(self.worker.app.state.revoked(ids))
        except BrokerError as exc:
            logger.error("Could not check revocations (the tasks are given back): %s", exc)
            self.worker.ledger.give_back([h.delivery for h in arrivals])
            return []
        if not revoked:
            return arrivals
        admitted = []
        for held in arrivals:
            message = held.job.message
            if message.id in revoked:
                self.seen.append(message.id)
                logger.info("Task %s[%s] is revoked: not run", message.display_name, message.id)
                self.worker.ledger.signal_revoked(held)
                self.worker.ledger.refuse(held, states.REVOKED, TaskRevokedError("revoked"))
            else:
                admitted.append(held)
        return admitted

    def _trusted(self, revoked: dict[str, bytes]) -> dict[str, bytes]:
        """The revocations whose signature holds (all of them with signing off)."""
        app, kept = self.worker.app, {}
        for task_id, raw in revoked.items():
            info = trusted(app, raw, f"the revocation of {task_id}")
            if info is not None:
                kept[task_id] = info
        return kept

    def tick(self, now: float) -> None:
        """Ask the broker whether a running task was revoked with terminate=True."""
        running = {h.job.message.id: h.job.id for h in self.worker.ledger.running() if not h.terminated}
        if not running:
            return
        try:
            revoked = self._trusted(self.worker.app.state.revoked(list(running)))
        except BrokerError as exc:
            logger.error("Could not check revocations: %s", exc)
            return
        for task_id, raw in revoked.items():
            info = json.loads(raw)
            if info.get("terminate"):
                self.seen.append(task_id)
                self.worker.terminate(running[task_id], int(info.get("signal", signal.SIGTERM)))
