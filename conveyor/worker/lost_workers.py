"""Tasks of a worker that vanished end FAILURE instead of staying STARTED for ever.

A task acknowledged as it started (without `acks_late`) is not redelivered
when its worker dies: Celery leaves it STARTED, and callers wait for ever. Each
worker's heartbeat lists the tasks it runs that are acknowledged already;
every worker remembers its peers' last lists. When a peer's heartbeat lapses
(its registration expires without it having unregistered), the tasks of its
last list that are still STARTED (or PENDING, without `track_started`) end
FAILURE with `WorkerLostError` naming it. One peer writes each (a claim in
the broker's key-value store), and only over an unfinished state, so a task
that finished meanwhile keeps its result.
(With `acks_late`, the broker redelivers such tasks instead. A worker alone
has no peer to notice it vanish.)
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from conveyor import states
from conveyor.exceptions import BackendError, BrokerError, WorkerLostError
from conveyor.worker.heartbeat import HEARTBEAT_SECONDS
from conveyor.worker.hooks import Hook

if TYPE_CHECKING:
    from conveyor.worker.worker import Worker

logger = logging.getLogger("conveyor.worker")

#: State store key-value namespace of the claims on a lost worker's tasks.
CLAIMS = "lost_tasks"


class LostWorkers(Hook):
    def __init__(self) -> None:
        self._peers: dict[str, list[str]] = {}  # hostname -> its acknowledged running tasks, last seen
        self._next = 0.0

    def start(self, worker: Worker) -> None:
        self.worker = worker

    def tick(self, now: float) -> None:
        if now < self._next:
            return
        self._next = now + HEARTBEAT_SECONDS
        try:
            live = self.worker.app.state.workers()
        except BrokerError:
            return  # the fetcher reports a lost broker; a lapse is looked for once it is back
        for hostname in [h for h in self._peers if h not in live]:
            self._lost(hostname, self._peers.pop(hostname))
        for hostname, raw in live.items():
            if hostname != self.worker.hostname:
                try:
                    self._peers[hostname] = [str(t) for t in json.loads(raw).get("acked_running", [])]
                except (ValueError, TypeError, AttributeError):
                    continue  # not a heartbeat of ours

    def _unfinished(self, task_ids: list[str]) -> list[str]:
        """Those without a final state (PENDING without track_started, or STARTED)."""
        backend = self.worker.app.backend
        stored = backend.read(task_ids) if task_ids else {}
        return [
            t for t in task_ids if t not in stored or backend.decode(stored[t])["status"] not in states.READY_STATES
        ]

    def _lost(self, hostname: str, task_ids: list[str]) -> None:
        if not task_ids:
            return
        app = self.worker.app
        backend, state = app.backend, app.state
        try:
            unfinished = self._unfinished(task_ids)
            mine = [t for t in unfinished if state.kv_swap(CLAIMS, t, None, hostname.encode())]
            still = self._unfinished(mine)  # again, now that they are ours: one may have finished meanwhile
            error = WorkerLostError(f"worker {hostname} stopped sending heartbeats while running the task")
            backend.write([backend.make_update(t, states.FAILURE, error, history={"lost_worker": hostname})
                           for t in still])  # fmt: skip
            for task_id in mine:
                state.kv_swap(CLAIMS, task_id, hostname.encode(), None)
        except (BackendError, BrokerError) as exc:
            logger.error("Could not mark the tasks of lost worker %s: %s", hostname, exc)
            return
        if still:
            logger.error("Worker %s stopped sending heartbeats: %d of its running tasks marked FAILURE (%s)",
                         hostname, len(still), ", ".join(still))  # fmt: skip
