"""What a worker holds, and what becomes of each delivery.

A delivery is opened (with signing on, a bad signature: dead letter), decoded
(undecodable: dead letter; refused content: FAILURE),
admitted by the feature hooks (`worker/hooks.py`) or ended by them, held while
it waits for and runs in the pool, and settled by its outcome: acknowledged,
dead-lettered, or given back to the broker. The ledger's writes (results,
acks) go into the batch `worker/progress.py` keeps; the worker's loop hands
each batch to the writer. Everything here runs on the thread handling a batch,
under the inbox's lock, except the snapshots (`running`, `unacknowledged`).
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING, NamedTuple

from conveyor import signals, states
from conveyor.brokers.base import Delivery
from conveyor.exceptions import BrokerError, ContentDisallowed, DecodeError, TaskRevokedError
from conveyor.execution import Job, Outcome, context_for, failure_outcome, history_entry, option
from conveyor.messages import Envelope, Message
from conveyor.serialization import accepted_content_types
from conveyor.signing import BadSignature
from conveyor.worker.hooks import Held, Hooks
from conveyor.worker.pools import Lost, Started
from conveyor.worker.progress import Progress

if TYPE_CHECKING:
    from conveyor.app import Conveyor

logger = logging.getLogger("conveyor.worker")

#: The longest reason a dead letter keeps.
MAX_REASON = 1000


class _Policy(NamedTuple):
    acks_late: bool
    track_started: bool
    reject_on_worker_lost: bool


class Ledger:
    def __init__(self, app: Conveyor, hostname: str, hooks: Hooks) -> None:
        self.app = app
        self.hostname = hostname
        self.hooks = hooks
        self.accept = accepted_content_types(app.conf.accept_content)
        self.signing = app.signing
        self.progress = Progress(app.backend, hostname)
        self.held: dict[int, Held] = {}
        self.processed = 0
        self.totals: dict[str, int] = {}
        """Tasks that ended here, by name (Celery's `stats()["total"]`)."""
        self.last_finished = 0.0  # time.monotonic() of the latest task's end
        self.freed = 0
        """Prefetch slots given up since the fetcher was last told (once per batch: one wake-up)."""
        self._job_ids = itertools.count(1)
        self._policies: dict[str, _Policy] = {}

    # -- arrivals --------------------------------------------------------------------------------
    def arrive(self, deliveries: list[Delivery]) -> list[Held]:
        """Decode a batch and let the hooks admit it: the arrivals to run, now held."""
        arrivals, now = [], time.time()
        for delivery in deliveries:
            message = self._decode(delivery)
            if message is not None:
                job = Job(next(self._job_ids), message, delivery.queue, self.hostname, delivery.redelivered)
                arrivals.append(Held(job, delivery, now))
        admitted = self.hooks.admit(arrivals)
        for held in admitted:
            self.held[held.job.id] = held
            self.hooks.received(held)
        return admitted

    def _decode(self, delivery: Delivery) -> Message | None:
        """The delivery's message; None when it was dealt with (dead-lettered or refused)."""
        body = delivery.body
        if self.signing is not None:
            try:
                body = self.signing.open(body)
            except BadSignature as exc:  # nothing of it is read: the dead letter keeps it whole
                self._dead_letter(delivery, f"bad signature: {exc}")
                return None
        try:
            envelope = Envelope.parse(body)
        except DecodeError as exc:
            self._dead_letter(delivery, f"undecodable message: {exc}")
            signals.task_rejected.send(None, message=delivery, exc=exc)  # Celery's "unknown message"
            return None
        try:
            return envelope.message(self.accept)
        except (ContentDisallowed, DecodeError) as exc:
            # The headers named the task: its caller learns why instead of waiting for ever.
            message = Message(task=envelope.task_name or "?", id=envelope.task_id or "?")
            stub, name = Held(Job(0, message, delivery.queue, self.hostname), delivery), f"{message.task}[{message.id}]"
            if isinstance(exc, ContentDisallowed):
                logger.error("Task %s refused: %s", name, exc)
                self.refuse(stub, states.FAILURE, exc)
            else:
                logger.error("Moving message from queue %r to the dead-letter store: task %s: %s",
                             delivery.queue, name, exc)  # fmt: skip
                error = DecodeError(f"undecodable message: {exc}")
                self.refuse(stub, states.FAILURE, error, dead_letter=f"task {name}: {exc}")
                signals.task_rejected.send(None, message=delivery, exc=error)  # Celery's "invalid task"
        return None

    def refuse(self, held: Held, state: str, error: BaseException, *, dead_letter: str | None = None) -> None:
        """End an arrival without running it: its result is `state` with `error`; its message is
        acknowledged, or moved to the dead letters with the reason `dead_letter`."""
        job = held.job
        if state == states.FAILURE:
            self.progress.updates.extend(failure_outcome(self.app, job, error).updates)
        else:
            self.progress.updates.append(
                self.app.backend.make_update(
                    job.message.id, state, error, history=history_entry(job), reply_to=job.message.reply_to
                )
            )
        self.hooks.refused(held, state, error)
        if dead_letter is None:
            self._ack(held.delivery)
        else:
            self._dead_letter(held.delivery, dead_letter, log=False)

    def defer(self, held: Held, delay: float) -> None:
        """Give an arrival back to the broker, deliverable again in `delay` seconds."""
        self.give_back([held.delivery], delay)

    def give_back(self, deliveries: list[Delivery], delay: float = 0.0, redelivery: bool = False) -> None:
        """Return deliveries to the broker (`redelivery`: counted as a delivery attempt)."""
        if not deliveries:
            return
        try:
            self.app.broker.requeue(deliveries, delay, redelivery=redelivery)
        except BrokerError as exc:
            logger.error("Could not requeue %d deliveries (their leases will lapse instead): %s", len(deliveries), exc)
        self.freed += len(deliveries)

    def signal_revoked(self, held: Held, terminated: bool = False, expired: bool = False) -> None:
        if signals.task_revoked.receivers:
            signals.task_revoked.send(
                self.app.tasks.get(held.job.message.task), request=context_for(held.job), terminated=terminated,
                signum=None, expired=expired,
            )  # fmt: skip

    # -- what the pool reports -------------------------------------------------------------------
    def started(self, event: Started) -> None:
        held = self.held.get(event.job_id)
        if held is None:
            return
        held.started, held.pid, held.started_at = True, event.pid, event.at
        self.hooks.started(held, event.pid)
        policy = self._policy(held.job.message.task)
        if policy.track_started and not held.job.message.ignore_result:
            self.progress.starting(held.job, event.pid, event.at)
        if not policy.acks_late:
            # Acknowledged as it starts (sent with its result if it ends within the grace:
            # one write, not two), but its window slot stays taken until it finishes: a
            # busy worker reserves no more than its window, so a later high-priority task
            # is not stuck behind a low one it took while busy.
            self.progress.ack_soon(held)

    def finished(self, outcome: Outcome) -> None:
        held = self.held.pop(outcome.job_id, None)
        if held is None:
            return
        self.progress.ack_now(held)
        self.processed += 1
        self.last_finished = time.monotonic()
        if held.terminated:
            outcome = self._revoked(held, outcome)
        self._end(held, outcome)
        if held.acked:
            self.freed += 1
        elif outcome.state == states.REJECTED and outcome.meta.get("requeue"):
            self.give_back([held.delivery])
        elif outcome.state == states.REJECTED or (
            outcome.state == states.FAILURE and not self.app.conf.task_acks_on_failure_or_timeout
        ):
            verb = "rejected" if outcome.state == states.REJECTED else "failed"
            self._dead_letter(held.delivery, f"task {verb}: {outcome.summary}", log=False)
        else:
            self._ack(held.delivery)

    def lost(self, event: Lost) -> None:
        held = self.held.pop(event.job_id, None)
        if held is None:
            return
        self.progress.ack_now(held)
        job = held.job
        policy = self._policy(job.message.task)
        if not held.acked and policy.acks_late and policy.reject_on_worker_lost:
            logger.error("Process running %s[%s] was lost (%s): returning it to the queue",
                         job.message.display_name, job.message.id, event.error)  # fmt: skip
            self.progress.write_started(job.message.id)  # the run that died stays in the history
            self.give_back([held.delivery], redelivery=True)
            return
        outcome = failure_outcome(self.app, job, event.error)
        if held.terminated:
            outcome = self._revoked(held, outcome)
        self._end(held, outcome)
        if held.acked:
            self.freed += 1
        else:
            self._ack(held.delivery)

    def _revoked(self, held: Held, outcome: Outcome) -> Outcome:
        """A terminated task's outcome: REVOKED, whatever its run made of the signal."""
        self.signal_revoked(held, terminated=True)
        job = held.job
        update = self.app.backend.make_update(job.message.id, states.REVOKED, TaskRevokedError("terminated"),
                                              history=history_entry(job), reply_to=job.message.reply_to)  # fmt: skip
        return replace(outcome, state=states.REVOKED, summary="TaskRevokedError('terminated')", updates=(update,))

    def _end(self, held: Held, outcome: Outcome) -> None:
        name = held.job.message.task
        self.totals[name] = self.totals.get(name, 0) + 1
        self.hooks.finished(held, outcome)
        self.progress.final(outcome.updates)
        self.progress.forget(held.job.message.id)  # ignored results leave no STARTED behind

    # -- settling ----------------------------------------------------------------------------------
    def _policy(self, name: str) -> _Policy:
        """A task's worker-side options, resolved against the settings once per worker."""
        policy = self._policies.get(name)
        if policy is None:
            task, conf = self.app.tasks.get(name), self.app.conf
            policy = self._policies[name] = _Policy(
                acks_late=bool(option(task, "acks_late", conf.task_acks_late)),
                track_started=bool(option(task, "track_started", conf.task_track_started)),
                reject_on_worker_lost=bool(option(task, "reject_on_worker_lost", conf.task_reject_on_worker_lost)),
            )
        return policy

    def _ack(self, delivery: Delivery) -> None:
        self.progress.acks.append(delivery)
        self.freed += 1

    def _dead_letter(self, delivery: Delivery, reason: str, log: bool = True) -> None:
        if len(reason) > MAX_REASON:  # a malformed field can be huge; brokers cap what a header holds
            reason = reason[:MAX_REASON] + "..."
        if log:
            logger.error("Moving message from queue %r to the dead-letter store: %s", delivery.queue, reason)
        try:
            self.app.broker.dead_letter(delivery, reason)
        except BrokerError as exc:
            logger.error("Could not dead-letter a message: %s", exc)
        self.freed += 1

    # -- snapshots, from any thread ------------------------------------------------------------------
    def running(self) -> list[Held]:
        """The tasks running now."""
        # list() of a dict view is atomic in CPython: the loop changes `held` meanwhile.
        return [h for h in list(self.held.values()) if h.started]

    def unacknowledged(self) -> list[Held]:
        """The deliveries held and not yet acknowledged."""
        return [h for h in list(self.held.values()) if not h.acked]
