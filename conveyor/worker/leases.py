"""Lease renewal: every third of the lease time, so a long task on a live worker is never delivered twice."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from conveyor.exceptions import BrokerError
from conveyor.worker.hooks import Hook

if TYPE_CHECKING:
    from conveyor.worker.worker import Worker

logger = logging.getLogger("conveyor.worker")


class Leases(Hook):
    def start(self, worker: Worker) -> None:
        self.worker = worker
        self.every = worker.app.broker.lease_seconds / 3
        self._next = 0.0

    def tick(self, now: float) -> None:
        if not self._next:
            self._next = now + self.every
        if now < self._next:
            return
        self._next = now + self.every
        mine = [h.delivery for h in self.worker.ledger.unacknowledged()]
        if not mine:
            return
        try:
            lost = self.worker.app.broker.renew(mine)
        except BrokerError as exc:
            logger.error("Could not renew %d leases: %s", len(mine), exc)
            return
        for delivery in lost:
            logger.warning("Lease on a message from queue %r was lost: another worker may run it", delivery.queue)
