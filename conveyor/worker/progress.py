"""A batch's writes, and when a task's STARTED and early ack are written.

STARTED (with `track_started`) is written once the task has run for
`STARTED_GRACE_SECONDS`; a shorter task's STARTED goes into its final write as
a history entry, so it costs no write of its own. Likewise a task acknowledged
as it starts (without `acks_late`) has its ack sent with its result when it
ends within the grace: one write, not two or three.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

from conveyor import states
from conveyor.backends.base import ResultBackend, StateUpdate
from conveyor.brokers.base import Delivery
from conveyor.execution import Job, history_entry
from conveyor.worker.hooks import Held

#: A task still running this long after it started gets its STARTED written (and, without
#: acks_late, its message acknowledged) on its own; one that ends sooner has them folded
#: into its final write.
STARTED_GRACE_SECONDS = 0.05


class Progress:
    """The results, acks and events of the batch being handled (the worker's thread only)."""

    def __init__(self, backend: ResultBackend, hostname: str) -> None:
        self.backend = backend
        self.hostname = hostname
        self.updates: list[StateUpdate] = []
        self.acks: list[Delivery] = []
        self.events: list[bytes] = []
        """Monitoring events, written after the batch's results and acks."""
        # STARTED records not yet encoded, by task id, with their pid and start time.
        self._starting: dict[str, tuple[Job, int, float]] = {}
        # Early acks not yet sent, by job id, with the time each task started.
        self._early_acks: dict[int, tuple[Held, float]] = {}

    def starting(self, job: Job, pid: int, at: float) -> None:
        """A tracked task started at `at` in process `pid`."""
        self._starting[job.message.id] = (job, pid, at)

    def ack_soon(self, held: Held) -> None:
        """Acknowledge a started task: with its result if it ends within the grace, else on its own."""
        self._early_acks[held.job.id] = (held, time.time())

    def ack_now(self, held: Held) -> None:
        """Send a started task's early ack now if it is still waiting."""
        if self._early_acks.pop(held.job.id, None) is not None:
            self.acks.append(held.delivery)
            held.acked = True

    def update(self, update: StateUpdate) -> None:
        """A task's own `update_state`: after its STARTED."""
        self.write_started(update.task_id)
        self.updates.append(update)

    def final(self, updates: Sequence[StateUpdate]) -> None:
        """A task's final writes, its STARTED folded in as a history entry when still unwritten."""
        for update in updates:
            start = self._starting.pop(update.task_id, None)
            if start is not None:
                job, pid, at = start
                entry = self.backend.encode_history(
                    states.STARTED, history_entry(job, pid=pid, name=job.message.task), at
                )
                update = StateUpdate(
                    update.task_id, update.state, update.meta, (entry, *update.history), update.expires_at,
                    update.reply_to,
                )  # fmt: skip
            self.updates.append(update)

    def write_started(self, task_id: str) -> None:
        """Write a pending STARTED on its own (the task is still running, or its process died)."""
        start = self._starting.pop(task_id, None)
        if start is not None:
            job, pid, at = start
            self.updates.append(
                self.backend.make_update(
                    task_id, states.STARTED, {"pid": pid, "hostname": self.hostname},
                    history=history_entry(job, pid=pid, name=job.message.task), now=at,
                    reply_to=job.message.reply_to,
                )
            )  # fmt: skip

    def forget(self, task_id: str) -> None:
        """Drop a pending STARTED (a task whose result is ignored leaves none behind)."""
        self._starting.pop(task_id, None)

    def next_due(self) -> float:
        """When the oldest pending STARTED or early ack is due (time.time(); inf: none)."""
        due = math.inf
        # The oldest comes first: dicts keep insertion order.
        if self._starting:
            due = next(iter(self._starting.values()))[2] + STARTED_GRACE_SECONDS
        if self._early_acks:
            due = min(due, next(iter(self._early_acks.values()))[1] + STARTED_GRACE_SECONDS)
        return due

    def take_due(self) -> tuple[list[StateUpdate], list[Delivery], list[bytes]]:
        """The batch's writes, with the STARTED records and early acks now due; starts a new batch."""
        if self._starting or self._early_acks:
            due = time.time() - STARTED_GRACE_SECONDS
            for task_id in [t for t, (_, _, at) in self._starting.items() if at <= due]:
                self.write_started(task_id)
            for held, _ in [entry for entry in self._early_acks.values() if entry[1] <= due]:
                self.ack_now(held)
        updates, acks, events = self.updates, self.acks, self.events
        self.updates, self.acks, self.events = [], [], []
        return updates, acks, events
