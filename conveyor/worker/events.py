"""Monitoring events (`worker_send_task_events`, on by default): Celery's task-* event names and
fields, written to the state store with each batch's results (the dashboard's task list, Flower's
API and metrics).

Cheap enough to leave on: the hook notes a task's arrival time and, when it ends, keeps the
outcome as it is; at the end of the batch, the batch's events become one record, a JSON array
of rows (`ROW` gives the fields in order), encoded in one call and written in one operation with
the batch's results. `events_of` turns records back into Celery's event dicts.

A task that ends within `GRACE_SECONDS` of its arrival has one event, its end, which carries
when it was received and started: under load that is one row per task, not three. One
still waiting or running at the end of a batch past the grace gets its `task-received` (and
`task-started`) of its own, so a long task shows as received and running while it runs.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
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
#: The fields of an event row, in order (null: not in this event).
ROW = (
    "type", "uuid", "name", "hostname", "timestamp", "received", "started", "pid", "runtime", "result",
    "exception", "args", "kwargs", "retries", "queue", "root_id", "parent_id",
)  # fmt: skip
#: Rows per record at most: a record is read whole, so a big batch is cut in several.
ROWS_PER_RECORD = 64

_EVENT_OF_STATE = {
    states.SUCCESS: "task-succeeded",
    states.FAILURE: "task-failed",
    states.RETRY: "task-retried",
    states.REVOKED: "task-revoked",
    states.IGNORED: "task-ignored",
    states.REJECTED: "task-rejected",
}


def events_of(records: Iterable[bytes]) -> Iterator[dict[str, Any]]:
    """Celery's event dicts from stored records, oldest first: arrays of rows, or single events
    as JSON objects. What is not an event is skipped."""
    for record in records:
        try:
            decoded = orjson.loads(record)
        except orjson.JSONDecodeError:
            continue
        if isinstance(decoded, dict):
            yield decoded
        elif isinstance(decoded, list):
            for row in decoded:
                if isinstance(row, list):
                    yield {key: value for key, value in zip(ROW, row) if value is not None}


class _End:
    """A task's end, as the hook keeps it until the batch is written."""

    __slots__ = ("at", "error", "held", "outcome", "received", "state")

    def __init__(self, held: Held, outcome: Outcome | None, received: float | None, state: str, error: str) -> None:
        self.held, self.outcome, self.received, self.state, self.error = held, outcome, received, state, error
        self.at = time.time()


class TaskEvents(Hook):
    def __init__(self) -> None:
        self._arrived: dict[int, tuple[Held, float]] = {}
        """Tasks held, not ended, whose arrival is not written yet: when each came, oldest first."""
        self._announced: dict[int, bool] = {}
        """Tasks whose arrival was written (long ones), not their end: whether their start was."""
        self._ended: list[_End] = []

    def start(self, worker: Worker) -> None:
        self.worker = worker
        self.hostname = worker.hostname
        self.events = worker.ledger.progress

    def received(self, held: Held) -> None:
        self._arrived[held.job.id] = (held, time.time())

    def finished(self, held: Held, outcome: Outcome) -> None:
        arrival = self._arrived.pop(held.job.id, None)
        if arrival is None:
            self._announced.pop(held.job.id, None)
        self._ended.append(_End(held, outcome, arrival[1] if arrival else None, outcome.state, outcome.summary))

    def refused(self, held: Held, state: str, error: BaseException) -> None:
        self._arrived.pop(held.job.id, None)
        self._ended.append(_End(held, None, time.time(), state, repr(error)))

    def flush(self) -> None:
        rows = [self._end_row(end) for end in self._ended] if self._ended else []
        self._ended.clear()
        if self._arrived or self._announced:
            rows.extend(self._long_running())
        for start in range(0, len(rows), ROWS_PER_RECORD):
            self.events.events.append(orjson.dumps(rows[start : start + ROWS_PER_RECORD], default=repr))

    def _end_row(self, end: _End) -> list[Any]:
        held, message = end.held, end.held.job.message
        kind = _EVENT_OF_STATE.get(end.state, "task-failed")
        result, exception = (end.error, None) if kind == "task-succeeded" else (None, end.error)
        runtime = end.outcome.runtime if end.outcome is not None else None
        row = [kind, message.id, message.task, self.hostname, end.at, end.received, None, None, runtime, result,
               exception]  # fmt: skip
        if end.received is not None:  # its arrival is in this row, with what a task-received event carries
            if held.started_at is not None:
                row[6:8] = held.started_at, held.pid
            row += [short_repr(message.args), short_repr(message.kwargs), message.retries, held.delivery.queue,
                    message.root_id, message.parent_id]  # fmt: skip
        return row

    def _long_running(self) -> list[list[Any]]:
        """Past the grace, a task still waiting or running has its arrival (and start) written."""
        rows: list[list[Any]] = []
        held_now, due = self.worker.held, time.time() - GRACE_SECONDS
        # Oldest first: the first still within the grace ends the look.
        for job_id, (held, received) in list(self._arrived.items()):
            if received > due:
                break
            del self._arrived[job_id]
            if job_id not in held_now:
                continue  # given back unrun (shutdown, a lost process): nothing to write
            message = held.job.message
            self._announced[job_id] = False
            rows.append(["task-received", message.id, message.task, self.hostname, received, received, None, None,
                         None, None, None, short_repr(message.args), short_repr(message.kwargs), message.retries,
                         held.delivery.queue, message.root_id, message.parent_id])  # fmt: skip
        for job_id, started_written in list(self._announced.items()):
            current = held_now.get(job_id)
            if current is None:
                del self._announced[job_id]
            elif not started_written and current.started_at is not None and current.started_at <= due:
                message = current.job.message
                rows.append(["task-started", message.id, message.task, self.hostname, current.started_at, None,
                             current.started_at, current.pid])  # fmt: skip
                self._announced[job_id] = True
        return rows
