"""Expired results are removed from the backend when the worker starts and every hour."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from conveyor.exceptions import BackendError
from conveyor.worker.hooks import Hook

if TYPE_CHECKING:
    from conveyor.worker.worker import Worker

logger = logging.getLogger("conveyor.worker")

CLEANUP_SECONDS = 3600.0


class ResultCleanup(Hook):
    def start(self, worker: Worker) -> None:
        self.backend = worker.app.backend
        self._next = 0.0

    def tick(self, now: float) -> None:
        if now < self._next:
            return
        self._next = now + CLEANUP_SECONDS
        try:
            removed = self.backend.cleanup()
        except BackendError as exc:
            logger.error("Could not clean up expired results: %s", exc)
            return
        if removed:
            logger.info("Removed %d expired results", removed)
