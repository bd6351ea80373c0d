"""Heartbeats: the worker announces itself in the broker's worker registry (`inspect`, the
dashboard) as often as Celery's worker heartbeat, and leaves it when it stops."""

from __future__ import annotations

import json
import logging
import os
import time
from typing import TYPE_CHECKING

from conveyor import __version__, signals
from conveyor.exceptions import BrokerError
from conveyor.worker.hooks import Hook

if TYPE_CHECKING:
    from conveyor.worker.worker import Worker

logger = logging.getLogger("conveyor.worker")

#: As often as Celery's worker heartbeat: the dashboard's rates have this resolution.
HEARTBEAT_SECONDS = 2.0


class Heartbeat(Hook):
    def start(self, worker: Worker) -> None:
        self.worker = worker
        self._next = 0.0
        self.tick(time.monotonic())

    def tick(self, now: float) -> None:
        if now < self._next:
            return
        self._next = now + HEARTBEAT_SECONDS
        worker = self.worker
        running = worker.ledger.running()
        info = {
            "hostname": worker.hostname, "pid": os.getpid(), "pool": worker.pool_name,
            "concurrency": worker.concurrency, "queues": worker.queues, "active": len(worker.held),
            "running": len(running),
            "acked_running": [h.job.message.id for h in running if h.acked],
            "processed": worker.processed, "version": __version__, "timestamp": time.time(),
            "tasks": sorted(name for name in worker.app.tasks if not name.startswith("conveyor.")),
        }  # fmt: skip
        try:
            worker.app.state.register_worker(worker.hostname, json.dumps(info).encode(), HEARTBEAT_SECONDS * 3)
        except BrokerError as exc:
            logger.error("Could not send heartbeat: %s", exc)
        else:
            signals.heartbeat_sent.send(worker)

    def stop(self) -> None:
        try:
            self.worker.app.state.unregister_worker(self.worker.hostname)
        except BrokerError:
            pass  # its announcement lapses on its own
