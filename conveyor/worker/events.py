"""Monitoring events (`worker_send_task_events`, on by default): Celery's task-* event names and
fields, written to the state store with each batch's results (the dashboard's task list, Flower's
API and metrics).

Cheap enough to leave on: when a task ends the hook keeps its outcome as it is; once
`ROWS_PER_RECORD` events wait, or the oldest has waited `LINGER_SECONDS` (the worker's loop
looks at the end of each batch, and every 50 ms after a task ended), they become one record
encoded in one call and written in one operation after that batch's results. So a busy worker
writes one record per 64 tasks, and an idle one answering calls one after another does not pay
a write per call. `events_of` turns records back into Celery's event dicts.

A record is a JSON array: an object of what its rows share (the worker's hostname), then the
rows (`ROW` gives the fields in order; null: not in this event). A row leaves out what can be
told without it, and `events_of` puts it back: the hostname, and the root_id of a task that is
its own root. A small JSON message's arguments go into the row as they are, rendered as
Celery's repr strings only when read (one orjson call encodes them with the record, instead of
a repr per task); others are rendered and cut short in the worker.

A task that ends within `GRACE_SECONDS` of its start has one event, its end, which carries
when it was received and started: under load that is one row per task, not three. One still
running past the grace gets its `task-received` and `task-started` of their own, so a long
task shows as running while it runs; one still waiting in the worker (prefetched) after
`WAITING_GRACE_SECONDS` gets its `task-received`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from conveyor import states
from conveyor.execution import Outcome, short_repr
from conveyor.states import SUCCESS
from conveyor.worker.hooks import Held, Hook
from conveyor.worker.progress import STARTED_GRACE_SECONDS

if TYPE_CHECKING:
    from conveyor.messages import Message
    from conveyor.worker.worker import Worker

#: A running task's received and started events wait this long to be folded into its end.
GRACE_SECONDS = STARTED_GRACE_SECONDS
#: A task waiting in the worker (prefetched) this long gets its received event on its own.
WAITING_GRACE_SECONDS = 1.0
#: The fields of an event row, in order (null: not in this event).
ROW = (
    "type", "uuid", "name", "hostname", "timestamp", "received", "started", "pid", "runtime", "result",
    "exception", "args", "kwargs", "retries", "queue", "root_id", "parent_id",
)  # fmt: skip
#: Rows per record at most: a record is read whole, so a big batch is cut in several.
ROWS_PER_RECORD = 64
#: How long events may wait for more before they are written (fewer rows than a record holds).
LINGER_SECONDS = 0.25
#: A message at most this long (JSON, not compressed) has its arguments kept as they are in its
#: row, since they are rendered (and cut short) only when read: a row holds no more of them
#: than the two reprs of 200 characters it held before (a compact message is 60 bytes and its
#: arguments; a Celery-format one, 650 and more, is rendered).
RAW_ARGUMENTS_BYTES = 512
#: How often the hook looks for tasks held past their grace.
LOOK_SECONDS = 0.025

_JSON = "application/json"
_EVENT_OF_STATE = {
    states.SUCCESS: "task-succeeded",
    states.FAILURE: "task-failed",
    states.RETRY: "task-retried",
    states.REVOKED: "task-revoked",
    states.IGNORED: "task-ignored",
    states.REJECTED: "task-rejected",
}


def events_of(records: Iterable[bytes]) -> Iterator[dict[str, Any]]:
    """Celery's event dicts from stored records, oldest first: arrays of rows (after an object
    of what the rows share), or single events as JSON objects. What is not an event is skipped."""
    for record in records:
        try:
            decoded = orjson.loads(record)
        except orjson.JSONDecodeError:
            continue
        if isinstance(decoded, dict):
            yield decoded
        elif isinstance(decoded, list):
            shared = decoded[0] if decoded and isinstance(decoded[0], dict) else {}
            hostname = shared.get("hostname")
            for row in decoded:
                if isinstance(row, list):
                    yield _event_of_row(row, hostname if isinstance(hostname, str) else None)


def _event_of_row(row: list[Any], hostname: str | None) -> dict[str, Any]:
    """The event a row holds; `hostname` that of the record's rows, when they leave it out."""
    event = {key: value for key, value in zip(ROW, row) if value is not None}
    if hostname is not None and "hostname" not in event:
        event["hostname"] = hostname
    if len(row) > 12:  # a row with the task's arguments, and what comes with them
        args, kwargs = row[11], row[12]
        if args is not None and not isinstance(args, str):
            event["args"] = short_repr(tuple(args) if isinstance(args, list) else args)
        if kwargs is not None and not isinstance(kwargs, str):
            event["kwargs"] = short_repr(kwargs)
        if len(row) > 15 and row[15] is None and "uuid" in event:
            event["root_id"] = event["uuid"]  # its own root
    return event


class TaskEvents(Hook):
    def __init__(self) -> None:
        self._rows: list[Sequence[Any]] = []
        """Events not written yet, oldest first."""
        self._since = 0.0
        """When the oldest of them came."""
        self._announced: dict[int, bool] = {}
        """Long tasks whose arrival was written, not their end: whether their start was."""
        self._next_look = 0.0

    def start(self, worker: Worker) -> None:
        self.worker = worker
        self._shared = {"hostname": worker.hostname}
        """What every row of a record shares, written once before them (rows leave it null)."""
        self.events = worker.ledger.progress

    def finished(self, held: Held, outcome: Outcome) -> None:
        # This runs for every task: one tuple, built in one expression, appended inline (not `_add`).
        now = time.time()
        if not self._rows:
            self._since = now
        message, state = held.job.message, outcome.state
        if state == SUCCESS:
            kind, result, exception = "task-succeeded", outcome.summary, None
        else:
            kind, result, exception = _EVENT_OF_STATE.get(state, "task-failed"), None, outcome.summary
        if self._announced and self._announced.pop(held.job.id, None) is not None:  # arrival written
            self._rows.append((kind, message.id, message.task, None, now, None, None, None,
                               outcome.runtime, result, exception))  # fmt: skip
            return
        # `_arguments` and `_root_id`, inline: a call would cost a third of all this method does.
        args: Any
        kwargs: Any
        delivery, root_id = held.delivery, message.root_id
        if len(delivery.body) <= RAW_ARGUMENTS_BYTES and message.content_type == _JSON and not message.compression:
            args, kwargs = message.args, message.kwargs
        else:
            args, kwargs = short_repr(message.args), short_repr(message.kwargs)
        self._rows.append((kind, message.id, message.task, None, now, held.received_at, held.started_at,
                           held.pid, outcome.runtime, result, exception, args, kwargs, message.retries,
                           delivery.queue, root_id if root_id != message.id else None, message.parent_id))  # fmt: skip

    def refused(self, held: Held, state: str, error: BaseException) -> None:
        now = time.time()
        self._announced.pop(held.job.id, None)
        message = held.job.message
        self._add((_EVENT_OF_STATE.get(state, "task-failed"), message.id, message.task, None, now,
                   held.received_at, None, None, None, None, repr(error), *_arguments(held), message.retries,
                   held.delivery.queue, _root_id(message), message.parent_id), now)  # fmt: skip

    def flush(self) -> None:
        # The loop flushes after every batch it handles, a prefork pool's reports often one at a
        # time: long tasks are looked for LOOK_SECONDS apart, not at each.
        now = time.time()
        held = self.worker.held
        if held and now >= self._next_look:
            self._next_look = now + LOOK_SECONDS
            first = next(iter(held.values()))  # held in order of arrival: the first is the oldest
            if first.started or first.received_at <= now - WAITING_GRACE_SECONDS:
                self._long(now)
        rows = self._rows
        if not rows:
            return
        if len(rows) < ROWS_PER_RECORD and now - self._since < LINGER_SECONDS and not self.worker.closing:
            return  # an idle worker's events wait for more: one write for many round trips
        self._rows = []
        shared = self._shared
        for start in range(0, len(rows), ROWS_PER_RECORD):
            chunk = [shared, *rows[start : start + ROWS_PER_RECORD]]
            try:
                record = orjson.dumps(chunk)
            except orjson.JSONEncodeError:  # arguments orjson cannot encode (an integer past 64 bits)
                record = orjson.dumps([_rendered(row) for row in chunk], default=repr)
            self.events.events.append(record)

    def _add(self, row: Sequence[Any], now: float) -> None:
        if not self._rows:
            self._since = now
        self._rows.append(row)

    def _arrival_row(self, held: Held) -> Sequence[Any]:
        message = held.job.message
        return ("task-received", message.id, message.task, None, held.received_at, held.received_at, None,
                None, None, None, None, *_arguments(held), message.retries, held.delivery.queue, _root_id(message),
                message.parent_id)  # fmt: skip

    def _long(self, now: float) -> None:
        """Tasks held past their grace get their arrival (and start) written: a task running past
        GRACE_SECONDS shows as running, one waiting past WAITING_GRACE_SECONDS as received.

        Held in order of arrival, and started in that order: the running ones come first, and
        the look ends at the first task that is neither running nor waiting long."""
        started_due, waiting_due = now - GRACE_SECONDS, now - WAITING_GRACE_SECONDS
        announced = self._announced
        for job_id, held in self.worker.held.items():
            if held.started:
                if held.started_at is None or held.started_at > started_due or announced.get(job_id):
                    continue
                if job_id not in announced:
                    self._add(self._arrival_row(held), now)
                message = held.job.message
                self._add(("task-started", message.id, message.task, None, held.started_at, None,
                           held.started_at, held.pid), now)  # fmt: skip
                announced[job_id] = True
            elif held.received_at <= waiting_due:
                if job_id not in announced:
                    announced[job_id] = False
                    self._add(self._arrival_row(held), now)
            else:
                break  # neither running nor waiting long: nor are those that came after it
        if len(announced) > len(self.worker.held):
            for job_id in [j for j in announced if j not in self.worker.held]:
                del announced[job_id]  # given back unrun (shutdown, a lost process): no end to write


def _arguments(held: Held) -> tuple[Any, Any]:
    """A task's arguments for its row: as they are when its message was small JSON (what they
    hold is JSON's, so a record encodes them; a NaN among them reads back as None), else
    rendered (cut short) here."""
    message = held.job.message
    if len(held.delivery.body) <= RAW_ARGUMENTS_BYTES and message.content_type == _JSON and not message.compression:
        return message.args, message.kwargs
    return short_repr(message.args), short_repr(message.kwargs)


def _root_id(message: Message) -> str | None:
    """A row's root_id: null when the task is its own root (`events_of` fills it in)."""
    return message.root_id if message.root_id != message.id else None


def _rendered(row: Any) -> Any:
    """The row with its arguments rendered, as `events_of` would show them."""
    if not isinstance(row, tuple) or len(row) <= 12 or isinstance(row[11], str):
        return row
    return (*row[:11], short_repr(row[11]), short_repr(row[12]), *row[13:])
