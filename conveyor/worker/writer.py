"""The writer: results, then acks, on a thread of its own when there is a backlog.

The main loop hands over each batch and goes back to feeding the pool, so a
busy worker keeps running tasks while a batch is on the wire. A batch handed
over when the main loop has nothing else to do and the writer is idle is
written by the main loop itself: one thread wake-up less between a task's end
and its caller. Batches are written in the order
handed over, results before acks (a crash in between reruns a task, never
loses it); whatever queued up meanwhile goes out as one batch. When the store
is unreachable the batch is kept and retried with backoff, logged once on loss
and once on recovery.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence

from conveyor.backends.base import ResultBackend, StateUpdate, coalesce
from conveyor.brokers.base import Delivery, Transport
from conveyor.brokers.state import StateStore
from conveyor.exceptions import BackendError, BrokerError

logger = logging.getLogger("conveyor.worker")

MAX_BACKOFF = 5.0
#: Attempts made at shutdown before what is left is given up (and its leases lapse).
FINAL_ATTEMPTS = 3

_Batch = tuple[Sequence[StateUpdate], Sequence[Delivery], Sequence[bytes]]


class Writer:
    def __init__(
        self,
        backend: ResultBackend,
        broker: Transport,
        state: StateStore,
        written: Callable[[Sequence[StateUpdate]], None] | None = None,
    ) -> None:
        """`written` is called (on the writer's thread) with each batch of updates once stored."""
        self.backend = backend
        self.broker = broker
        self.state = state
        self.written = written
        self._batches: queue.SimpleQueue[_Batch | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="conveyor-writer", daemon=True)
        # Batches handed to the thread and not yet written: only submit() adds, only the thread takes away.
        self._unfinished = 0
        self._count_lock = threading.Lock()
        self._local = threading.local()  # acks of the results this thread stored inline

    def start(self) -> None:
        self._thread.start()

    def submit(
        self,
        updates: Sequence[StateUpdate],
        acks: Sequence[Delivery],
        events: Sequence[bytes] = (),
        inline: bool = False,
    ) -> None:
        """Write a batch: its results, then its deliveries' acks, then its monitoring events
        (those are best effort: dropped, not retried, on failure).

        With `inline` (the caller has nothing else to do meanwhile) and nothing
        queued or being written, the calling thread writes the results at once:
        an idle worker's result then reaches its caller without waking another
        thread first. It sends their acks with `send_inline_acks()` once done
        with what else it holds. Otherwise, or if that one attempt fails, the batch
        goes to the writer's thread, which writes batches in order and retries with
        backoff. Call from one thread at a time (the worker's, under its inbox's lock).
        """
        if inline and not self._unfinished:
            updates = self._write(list(updates), [], closing=False, inline=True)[0]
            if not updates:  # stored: their acks go once the caller is done (send_inline_acks)
                self._local.acks = [*getattr(self._local, "acks", ()), *acks]
                acks = ()
            if events:
                self._record(list(events))
                events = ()
            if not updates and not acks:
                return
        with self._count_lock:
            self._unfinished += 1
        self._batches.put((updates, acks, events))

    def send_inline_acks(self, confirm: bool = True) -> None:
        """Acknowledge the deliveries whose results this thread stored inline, and read the
        replies (`Transport.confirm`); if that fails, the writer's thread sends them again.
        Without `confirm` the replies are left for this thread's next broker call.

        Call after `submit(inline=True)` once nothing waits on this thread: the
        store's round trip for the acks then holds up no other event, and the
        thread (the fetcher's or a pool's) leaves nothing unconfirmed behind it.
        """
        acks: list[Delivery] = getattr(self._local, "acks", [])
        if not acks:
            return
        self._local.acks = []
        try:
            self.broker.ack(acks)
            if confirm:
                self.broker.confirm()
        except BrokerError:
            with self._count_lock:
                self._unfinished += 1
            self._batches.put(((), acks, ()))

    def close(self, timeout: float | None = None) -> None:
        """Write what is queued, then stop."""
        self._batches.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        updates: list[StateUpdate] = []
        acks: list[Delivery] = []
        closing = False
        taken = 0  # batches merged into updates and acks
        while not closing:
            batch = self._batches.get()
            events: list[bytes] = []
            while True:
                if batch is None:
                    closing = True
                else:
                    updates += batch[0]
                    acks += batch[1]
                    events += batch[2]
                    taken += 1
                try:
                    batch = self._batches.get_nowait()
                except queue.Empty:
                    break
            updates, acks = self._write(updates, acks, closing)
            if events:
                self._record(events)
            if not updates and not acks:
                with self._count_lock:
                    self._unfinished -= taken
                taken = 0

    def _tell(self, updates: Sequence[StateUpdate]) -> None:
        assert self.written is not None
        try:
            self.written(updates)
        except Exception:  # the results are stored: what follows them must not undo that
            logger.exception("After storing %d results", len(updates))

    def _record(self, events: list[bytes]) -> None:
        try:
            self.state.add_events(events)
        except BrokerError as exc:
            logger.warning("Dropped %d task events: %s", len(events), exc)

    def _write(
        self, updates: list[StateUpdate], acks: list[Delivery], closing: bool, inline: bool = False
    ) -> tuple[list[StateUpdate], list[Delivery]]:
        """Write and acknowledge; on failure return what is left (merged with the next batch, or,
        when written inline by the worker's loop, handed to the writer's thread, which retries
        and logs)."""
        failures = 0
        while updates or acks:
            try:
                if updates:
                    self.backend.write(coalesce(updates))
                    if self.written is not None:
                        self._tell(updates)
                    updates = []
                if acks:
                    self.broker.ack(acks)
                    if not inline and self._batches.empty():
                        # Nothing follows to carry their replies: check now that they landed
                        # (a broker whose acks are not waited for, Redis, sends them again if lost).
                        self.broker.confirm()
                    acks = []
            except (BackendError, BrokerError) as exc:
                if inline:
                    return updates, acks
                failures += 1
                if failures == 1:
                    logger.error(
                        "Could not store %d results / acknowledge %d messages (retrying): %s",
                        len(updates), len(acks), exc,
                    )  # fmt: skip
                if closing and failures >= FINAL_ATTEMPTS:
                    logger.error(
                        "Giving up on %d results and %d acknowledgements at shutdown "
                        "(unacknowledged tasks will be redelivered when their leases lapse)",
                        len(updates), len(acks),
                    )  # fmt: skip
                    return [], []
                time.sleep(min(MAX_BACKOFF, 0.25 * 2**failures))
                if not closing and not self._batches.empty():
                    return updates, acks  # go out together with what queued up meanwhile
        if failures:
            logger.warning("Results and acknowledgements stored again after %d failed attempts", failures)
        return updates, acks
