"""The worker: fetch, decide, run, record, acknowledge.

One thread (`Worker.run`) owns every decision. The fetcher thread and the
pool report to it through its inbox (`worker/inbox.py`); it takes everything
that is waiting and handles it as a batch, whose results and acks the writer
thread (`worker/writer.py`) sends in one backend round trip and one broker
round trip: under load batches grow. On an idle worker the reporting thread
handles its own event under the inbox's lock and the loop is not woken: the
fetcher's thread submits the delivery, the pool's thread writes the result.

For each delivery: decode (undecodable -> dead letter), refuse content not in
accept_content (FAILURE), unknown task name (FAILURE), expired (REVOKED), else
submit to the pool. The message is acknowledged when the pool reports the
start (or, with acks_late, after the result is written). STARTED is written
once the task has run for STARTED_GRACE_SECONDS; a shorter task's STARTED
goes into its final write as a history entry, so it costs no write of its
own. Leases of unacknowledged deliveries are renewed every third of the lease
time, so a long task on a live worker is never delivered twice.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, NamedTuple, Union

from conveyor import __version__, dedup, signals, states
from conveyor.backends.base import StateUpdate
from conveyor.brokers.base import Delivery
from conveyor.canvas import chord_part, chord_part_done
from conveyor.config import parse_rate
from conveyor.control import RATE_LIMITS
from conveyor.exceptions import (
    BackendError,
    BrokerError,
    ContentDisallowed,
    DecodeError,
    NotRegistered,
    Reject,
    TaskRevokedError,
    WorkerLostError,
)
from conveyor.execution import Job, Outcome, context_for, failure_outcome, history_entry, option, short_repr
from conveyor.messages import Envelope, Message, utcnow
from conveyor.serialization import accepted_content_types
from conveyor.worker.consumer import FETCH_TIMEOUT, Fetcher
from conveyor.worker.inbox import Inbox
from conveyor.worker.pool_factory import create_pool
from conveyor.worker.pools import Finished, Lost, Pool, PoolEvent, SoloPool, Started, Updated
from conveyor.worker.writer import Writer

if TYPE_CHECKING:
    from conveyor.app import Conveyor

logger = logging.getLogger("conveyor.worker")

#: As often as Celery's worker heartbeat: the dashboard's rates have this resolution.
HEARTBEAT_SECONDS = 2.0
#: How often running tasks are checked against revocations with terminate=True.
REVOKE_CHECK_SECONDS = 0.5
CLEANUP_SECONDS = 3600.0
#: Default concurrency of the asyncio pool: async tasks in flight on its loop.
ASYNCIO_CONCURRENCY = 100
#: Most events handled (and written) as one batch.
MAX_BATCH = 2000
#: A task still running this long after it started gets its STARTED written (and, without
#: acks_late, its message acknowledged) on its own; one that ends sooner has them folded
#: into its final write (one write, not two or three).
STARTED_GRACE_SECONDS = 0.05
#: A message delivered this much before its eta is sent back to wait for the rest.
EARLY_TOLERANCE_SECONDS = 1.0
#: Under load the main loop pauses up to this long between batches, so that reports gather.
MAX_LINGER_SECONDS = 0.002
#: ... and for at most this share of the time the pool needs for the work queued in it.
LINGER_SHARE = 0.25


@dataclass(slots=True)
class _Delivered:
    deliveries: list[Delivery]


@dataclass(frozen=True)
class _Stop:
    cold: bool
    signal: str | None = None  # the signal's name when one asked (worker_shutting_down's `sig`)


@dataclass(frozen=True)
class _Terminate:
    job_id: int
    signum: int


@dataclass(frozen=True)
class _RateLimits:
    """The rate limits set at run time (`app.control.rate_limit`) changed."""

    limits: dict[str, str]


@dataclass(frozen=True)
class _Failed:
    """Handling an event on the fetcher's or a pool's thread raised: the loop raises it."""

    error: Exception


_Event = Union[_Delivered, _Stop, _Terminate, _RateLimits, _Failed, PoolEvent]


_EVENT_OF_STATE = {
    states.SUCCESS: "succeeded",
    states.FAILURE: "failed",
    states.RETRY: "retried",
    states.REVOKED: "revoked",
    states.IGNORED: "ignored",
    states.REJECTED: "rejected",
}


class _Policy(NamedTuple):
    acks_late: bool
    track_started: bool
    reject_on_worker_lost: bool
    rate: float | None
    """Tasks per second (None: no limit)."""


@dataclass
class _Held:
    job: Job
    delivery: Delivery
    acked: bool = False
    started: bool = False
    terminated: bool = False


class Worker:
    """Consumes queues and runs tasks until stopped (SIGTERM/SIGINT: warm, twice: cold)."""

    def __init__(
        self,
        app: Conveyor,
        *,
        queues: Sequence[str] | None = None,
        concurrency: int | None = None,
        pool: str | None = None,
        hostname: str | None = None,
        prefetch_multiplier: int | None = None,
        beat: bool = False,
    ) -> None:
        conf = app.conf
        self.app = app
        self.queues = list(queues or app.default_queues())
        self.pool_name = pool or conf.worker_pool
        # The solo pool runs one task at a time, whatever -c says; an event loop holds many.
        default = ASYNCIO_CONCURRENCY if self.pool_name == "asyncio" else os.cpu_count() or 1
        self.concurrency = 1 if self.pool_name == "solo" else concurrency or conf.worker_concurrency or default
        self.hostname = hostname or f"conveyor@{socket.gethostname()}"
        multiplier = conf.worker_prefetch_multiplier if prefetch_multiplier is None else prefetch_multiplier
        # 0 means no limit, as in Celery; a bound still keeps one fetch reasonable.
        self.prefetch = self.concurrency * multiplier if multiplier else 10_000
        self.accept = accepted_content_types(conf.accept_content)
        self.inbox: Inbox[_Event] = Inbox(self._handle_batch, MAX_BATCH)
        # The loop went to sleep for longer than a task's grace: a delivery handled by the
        # fetcher's thread meanwhile has to wake it for the task's deadlines.
        self._loop_sleeps_long = False
        self._last_finished = 0.0
        # An idle solo worker's one delivery, run by the fetcher's thread (their only user).
        self._may_run_here = False
        self._run_here: Job | None = None
        self.held: dict[int, _Held] = {}
        self.processed = 0
        self._job_ids = itertools.count(1)
        self._updates: list[StateUpdate] = []
        # STARTED records not yet encoded: a task that finishes before the next write
        # needs only its history entry, folded into its final update.
        self._starting: dict[str, tuple[Job, int, float]] = {}
        # Early acks not yet sent, by job id, with the time each task started: one that
        # finishes within the grace has its ack sent after its result, in the same write.
        self._early_acks: dict[int, float] = {}
        self._policies: dict[str, _Policy] = {}
        self._chord_parts: dict[str, tuple[str, int]] = {}  # task id -> its chord (group id, size) until counted
        self._rate_limits: dict[str, str] = {}  # set at run time, by task name
        self._rate_limits_seen: dict[str, str] = {}  # the housekeeping thread's copy
        self._freed_slots = 0
        self._acks: list[Delivery] = []
        # Monitoring events (-E), written with each batch: Celery's task-* event names and fields.
        self._send_events = bool(app.conf.worker_send_task_events)
        self._events: list[bytes] = []
        self._stopping = False
        self._cold = False
        self.pool: Pool | None = None
        self.fetcher: Fetcher | None = None
        self.writer: Writer | None = None
        self.embed_beat = beat
        self.ready = threading.Event()
        self._done = threading.Event()

    # -- lifecycle ------------------------------------------------------------------------
    def stop(self, cold: bool = False) -> None:
        """Ask the worker to stop (thread- and signal-safe)."""
        self.inbox.post(_Stop(cold))

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.inbox.post(_Stop(cold=self._stopping, signal=signal.Signals(signum).name))

    def run(self) -> None:
        """Run until stopped. Installs SIGTERM/SIGINT handlers when on the main thread."""
        app = self.app
        signals.celeryd_init.send(self.hostname, instance=self, conf=app.conf, options={})
        app.finalize()
        app.annotate_tasks()
        signals.worker_init.send(self)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
        self._warn_unconsumed_default_queue()
        broker, backend = app.broker, app.backend
        self.writer = Writer(backend, broker, written=self._written)
        self.writer.start()
        self.pool = create_pool(self.pool_name, app, self.concurrency)
        self.pool.start(self._from_pool if self.pool.inline_reports else self.inbox.post)
        self._check_rate_limits()  # before the first delivery
        self.fetcher = Fetcher(broker, self.queues, self.prefetch, self._from_fetcher)
        self.fetcher.start()
        self._heartbeat()
        self._cleanup_results()
        threading.Thread(target=self._housekeeping, name="conveyor-housekeeping", daemon=True).start()
        if self.embed_beat:
            from conveyor.beat import Beat

            beat = Beat(app)
            signals.beat_embedded_init.send(beat)
            threading.Thread(target=beat.run, args=(self._done,), name="conveyor-beat", daemon=True).start()
        logger.info(
            "%s ready: pool=%s concurrency=%d prefetch=%d queues=%s broker=%s backend=%s",
            self.hostname, self.pool_name, self.concurrency, self.prefetch,
            ",".join(self.queues), broker.display_url, backend.display_url,
        )  # fmt: skip
        self.ready.set()
        signals.worker_ready.send(self)
        try:
            self._loop()
        finally:
            self._done.set()
            self._finish()
            signals.worker_shutdown.send(self)

    def _loop(self) -> None:
        assert self.pool is not None
        task_seconds = 0.0  # recent wall time per finished task, while busy
        last, last_processed = time.monotonic(), 0
        rang = True
        while True:
            with self.inbox.taking() as batch:
                if not batch and not rang:
                    self._confirm_when_idle()
                self._handle_batch(batch)
                if (self._stopping and not self.held) or self._cold:
                    return
                timeout = self._time_to_next_deadline()
                self._loop_sleeps_long = timeout > STARTED_GRACE_SECONDS
            assert self.writer is not None
            self.writer.send_inline_acks()
            # Under load, let a few tasks' reports gather before the next batch: one wake-up
            # and one write for several tasks, not one each. Only while the pool has queued
            # work to go on with, and for a fraction of the time it takes to run it.
            now, backlog = time.monotonic(), self.pool.queued()
            if self.processed > last_processed:
                seconds = (now - last) / (self.processed - last_processed)
                task_seconds = seconds if not task_seconds else 0.8 * task_seconds + 0.2 * seconds
            last, last_processed = now, self.processed
            if backlog > 0 and task_seconds:
                time.sleep(min(MAX_LINGER_SECONDS, backlog * task_seconds * LINGER_SHARE))
            rang = self.inbox.wait(timeout)

    def _time_to_next_deadline(self) -> float:
        """How long the loop may sleep: until a pending STARTED or early ack is due."""
        timeout = 1.0
        if self.held or time.monotonic() - self._last_finished < 1.0:
            # A task may start (and add a deadline) without waking the loop. A worker that
            # has been idle for a while sleeps longer, and its next delivery rings.
            timeout = STARTED_GRACE_SECONDS
        # The oldest pending STARTED or early ack is due first (dicts keep insertion order).
        if self._starting:
            first_start = next(iter(self._starting.values()))[2]
            timeout = min(timeout, first_start + STARTED_GRACE_SECONDS - time.time())
        if self._early_acks:
            timeout = min(timeout, next(iter(self._early_acks.values())) + STARTED_GRACE_SECONDS - time.time())
        return max(0.0, timeout)

    def _handle_batch(self, events: list[_Event]) -> None:
        """Handle events in order and hand their writes over (the inbox's lock is held)."""
        for event in events:
            self._handle(event)
        self._flush()

    def _post_or_handle(self, event: _Event) -> None:
        """From the fetcher's or the pool's thread: handled on that thread when the loop is idle."""
        try:
            if not self.inbox.post_or_handle(event):
                return
        except Exception as exc:
            # Not on this thread (the fetcher's or a pool's would just end, silently): the loop
            # raises it, and the worker stops with it as before.
            self.inbox.post(_Failed(exc))
            return
        if self._stopping or (self._loop_sleeps_long and self.held):
            self._loop_sleeps_long = False
            self.inbox.ring()  # the loop's sleep ends sooner, or the worker is done
        assert self.writer is not None and self.fetcher is not None
        # Once the lock is free for the next event. The fetcher's thread (an idle solo
        # worker's task ran on it) leaves the replies to its next fetch, which reads them
        # first: it goes back to waiting for the next message one round trip sooner.
        self.writer.send_inline_acks(confirm=not self.fetcher.is_current_thread())

    # Only an idle worker's events are handled where they arise (nothing else held, or only
    # the task reported on): a busy worker's go to the loop, which gathers them into batches.
    def _from_fetcher(self, deliveries: list[Delivery]) -> None:
        if self.held:
            self.inbox.post(_Delivered(deliveries))
            return
        self._may_run_here = isinstance(self.pool, SoloPool) and len(deliveries) == 1
        self._post_or_handle(_Delivered(deliveries))
        job, self._run_here, self._may_run_here = self._run_here, None, False
        if job is not None:
            assert isinstance(self.pool, SoloPool)
            # One task at a time, on the thread that received it (as Celery's solo pool runs
            # tasks on its consumer's): no wake-up of the pool's thread. The fetcher takes
            # nothing more meanwhile, which solo could not run before this one ends anyway.
            self.pool.run(job)

    def _from_pool(self, event: PoolEvent) -> None:
        if isinstance(event, Updated) or len(self.held) > 1:
            # (Updated comes from the task's own code, where a soft limit may be raised.)
            self.inbox.post(event)
        else:
            self._post_or_handle(event)

    def _confirm_when_idle(self) -> None:
        """Idle for a while: check that what this loop sent without waiting (acks it wrote itself,
        a chord's body) landed; a lost connection sends it again (Broker.confirm)."""
        try:
            self.app.confirm_published()
        except BrokerError as exc:  # the fetcher and writer report an unreachable broker
            logger.debug("Could not confirm sent acknowledgements yet: %s", exc)

    def _housekeeping(self) -> None:
        """Lease renewal, heartbeats and result clean-up, on a thread of their own.

        Separate from the main loop, so that renewals keep their rhythm however
        busy the loop is.
        """
        renew_every = self.app.broker.lease_seconds / 3
        next_renew = time.monotonic() + renew_every
        next_heartbeat = time.monotonic() + HEARTBEAT_SECONDS
        next_cleanup = time.monotonic() + CLEANUP_SECONDS
        while not self._done.wait(REVOKE_CHECK_SECONDS):
            self._check_terminations()
            self._check_rate_limits()
            now = time.monotonic()
            if now >= next_renew:
                self._renew_leases()
                next_renew = now + renew_every
            if now >= next_heartbeat:
                self._heartbeat()
                next_heartbeat = now + HEARTBEAT_SECONDS
            if now >= next_cleanup:
                self._cleanup_results()
                next_cleanup = now + CLEANUP_SECONDS

    def _finish(self) -> None:
        assert self.pool is not None and self.fetcher is not None
        self.inbox.close()  # what the pool and fetcher report from now on waits here
        self.fetcher.stop()
        if self._cold or not self._stopping:  # a cold shutdown, or the loop failed
            logger.warning(
                "%s: returning %d unacknowledged tasks to the queue",
                "Cold shutdown" if self._cold else "Stopping after an error",
                self._unacked_count(),
            )
            self.pool.terminate()
            self._requeue([h.delivery for h in self.held.values() if not h.acked])
        else:
            self.pool.join(10)
        self.fetcher.join(FETCH_TIMEOUT + 5)
        # Whatever was fetched after the loop ended goes back to the queue.
        for event in self.inbox.leftovers():
            if isinstance(event, _Delivered):
                self._requeue(event.deliveries)
        self._flush()
        assert self.writer is not None
        self.writer.send_inline_acks()
        self.writer.close(timeout=60)
        try:
            self.app.broker.unregister_worker(self.hostname)
        except BrokerError:
            pass
        logger.info("%s stopped after %d tasks", self.hostname, self.processed)

    def _begin_warm_shutdown(self) -> None:
        assert self.pool is not None and self.fetcher is not None
        self._stopping = True
        self.fetcher.stop()
        returned = [self.held.pop(job.id).delivery for job in self.pool.shutdown()]
        self._requeue(returned)
        logger.warning(
            "Warm shutdown: finishing %d running tasks, %d not started went back to the queue "
            "(signal again to stop now)",
            len(self.held),
            len(returned),
        )

    # -- events -----------------------------------------------------------------------------
    def _handle(self, event: _Event) -> None:
        if isinstance(event, _Delivered):
            if self._stopping:
                self._requeue(event.deliveries)
            else:
                self._receive_batch(event.deliveries)
        elif isinstance(event, Started):
            self._started(event)
        elif isinstance(event, Updated):
            self._materialize_start(event.update.task_id)
            self._updates.append(event.update)
        elif isinstance(event, Finished):
            self._finished(event.outcome)
        elif isinstance(event, Lost):
            self._lost(event)
        elif isinstance(event, _Terminate):
            held = self.held.get(event.job_id)
            if held is not None and self.pool is not None:
                logger.warning("Terminating %s[%s] (revoked)", held.job.message.display_name, held.job.message.id)
                held.terminated = True
                self.pool.kill(event.job_id, event.signum)
        elif isinstance(event, _RateLimits):
            for name in sorted(event.limits.keys() | self._rate_limits.keys()):
                if event.limits.get(name) != self._rate_limits.get(name):
                    logger.warning("Rate limit of %s set to %s", name, event.limits.get(name, "its configured value"))
            self._rate_limits = event.limits
            self._policies.clear()
        elif isinstance(event, _Failed):
            raise event.error  # a bug of ours: the worker stops, as when its loop's own handling fails
        elif isinstance(event, _Stop):
            cold = event.cold or self._stopping
            signals.worker_shutting_down.send(
                self.hostname, sig=event.signal, how="Cold" if cold else "Warm", exitcode=0
            )
            if cold:
                self._cold = True
            else:
                self._begin_warm_shutdown()

    def _receive_batch(self, deliveries: list[Delivery]) -> None:
        decoded = [(d, self._decode(d)) for d in deliveries]
        ids = [message.id for d, message in decoded if message is not None and not d.not_revoked]
        try:
            revoked = self.app.broker.revoked(ids) if ids else {}
        except BrokerError as exc:
            logger.error("Could not check revocations (the tasks are given back): %s", exc)
            self._requeue([d for d, message in decoded if message is not None])
            return
        for delivery, message in decoded:
            if message is not None:
                self._receive(delivery, message, message.id in revoked)

    def _decode(self, delivery: Delivery) -> Message | None:
        """The delivery's message; None when it was dealt with (dead-lettered or refused)."""
        try:
            envelope = Envelope.parse(delivery.body)
        except DecodeError as exc:
            self._dead_letter(delivery, f"undecodable message: {exc}")
            return None
        try:
            message = envelope.message(self.accept)
            chord_part(message.headers)
            return message
        except (ContentDisallowed, DecodeError) as exc:
            # The headers named the task: its caller learns why instead of waiting for ever.
            stub = Message(task=envelope.task_name or "?", id=envelope.task_id or "?")
            if isinstance(exc, ContentDisallowed):
                logger.error("Task %s[%s] refused: %s", stub.task, stub.id, exc)
                self._fail_now(delivery, stub, exc)
            else:
                job = Job(0, stub, delivery.queue, self.hostname)
                reason = f"task {stub.task}[{stub.id}]: {exc}"
                self._fail_to_dead_letters(delivery, job, DecodeError(f"undecodable message: {exc}"), reason)
        return None

    def _receive(self, delivery: Delivery, message: Message, revoked: bool) -> None:
        job = Job(next(self._job_ids), message, delivery.queue, self.hostname, delivery.redelivered)
        chord = chord_part(message.headers)
        if chord is not None:  # a chord's header part: counted once stored
            self._chord_parts[message.id] = chord
        logger.info("Task %s[%s] received", message.display_name, message.id)
        if revoked:
            logger.info("Task %s[%s] is revoked: not run", message.display_name, message.id)
            self._signal_revoked(job)
            self._end_now(delivery, job, states.REVOKED, TaskRevokedError("revoked"))
            return
        redeliveries = delivery.attempts - 1
        if redeliveries > self.app.conf.task_max_redeliveries:
            reason = (
                f"delivered {delivery.attempts} times and every run died before finishing "
                f"(task_max_redeliveries={self.app.conf.task_max_redeliveries})"
            )
            logger.error("Task %s[%s] %s: moved to the dead letters", message.display_name, message.id, reason)
            self._fail_to_dead_letters(delivery, job, WorkerLostError(reason), reason, log=False)
            return
        if message.task not in self.app.tasks:
            error = NotRegistered(
                f"Task {message.task!r} is not registered in this worker (registered: "
                f"{', '.join(sorted(t for t in self.app.tasks if not t.startswith('conveyor.'))) or 'none'});"
                " is the module in -A, imports or include?"
            )
            logger.error("Received unregistered task of type %r: %s", message.task, error)
            signals.task_unknown.send(None, name=message.task, id=message.id, message=message, exc=error)
            self._fail_now(delivery, message, error, job)
            return
        if message.is_expired():
            logger.warning("Task %s[%s] expired at %s: not run", message.display_name, message.id, message.expires)
            self._signal_revoked(job, expired=True)
            self._end_now(delivery, job, states.REVOKED, TaskRevokedError(f"task expired at {message.expires}"))
            return
        early = (message.eta - utcnow()).total_seconds() if message.eta is not None else 0.0
        if early > EARLY_TOLERANCE_SECONDS:
            # Delivered before its eta: a broker whose longest delay is shorter (RabbitMQ's
            # TTLs end at 49 days) sends it on its way again for the rest.
            self._requeue([delivery], delay=early)
            return
        wait = self._rate_limit_wait(message.task)
        if wait > 0:
            # Back to the broker until a token is due: it holds no pool slot meanwhile.
            self._requeue([delivery], delay=wait)
            return
        self.held[job.id] = _Held(job, delivery)
        if self._send_events:
            self._event(
                "received", message, args=short_repr(message.args), kwargs=short_repr(message.kwargs),
                retries=message.retries, queue=delivery.queue, root_id=message.root_id, parent_id=message.parent_id,
            )  # fmt: skip
        if signals.task_received.receivers:
            signals.task_received.send(self, request=context_for(job))
        assert self.pool is not None
        # An idle solo worker's only task (see _from_fetcher). Held alone: a delivery the loop
        # took just before may have gone to the pool's thread, and solo runs one at a time.
        if self._may_run_here and len(self.held) == 1 and self.fetcher and self.fetcher.is_current_thread():
            self._run_here = job
        else:
            self.pool.submit(job)

    def _signal_revoked(self, job: Job, terminated: bool = False, expired: bool = False) -> None:
        if signals.task_revoked.receivers:
            signals.task_revoked.send(
                self.app.tasks.get(job.message.task), request=context_for(job), terminated=terminated,
                signum=None, expired=expired,
            )  # fmt: skip

    def _started(self, event: Started) -> None:
        held = self.held.get(event.job_id)
        if held is None:
            return
        held.started = True
        job = held.job
        self._event("started", job.message, pid=event.pid)
        policy = self._policy(job.message.task)
        if policy.track_started and not job.message.ignore_result:
            self._starting[job.message.id] = (job, event.pid, event.at)
        if not policy.acks_late:
            # Acknowledged as it starts (sent with its result if it ends within the grace:
            # one write, not two), but its window slot stays taken until it finishes: a
            # busy worker reserves no more than its window, so a later high-priority task
            # is not stuck behind a low one it took while busy.
            self._early_acks[job.id] = time.time()

    def _send_early_ack(self, job_id: int) -> None:
        """Acknowledge a started task now if its early ack is still waiting."""
        if self._early_acks.pop(job_id, None) is not None:
            held = self.held[job_id]
            self._acks.append(held.delivery)
            held.acked = True

    def _finished(self, outcome: Outcome) -> None:
        if outcome.job_id not in self.held:
            return
        self._send_early_ack(outcome.job_id)
        held = self.held.pop(outcome.job_id)
        self.processed += 1
        self._last_finished = time.monotonic()
        if held.terminated:
            outcome = replace(outcome, state=states.REVOKED, updates=self._revoked_updates(held.job))
            self._signal_revoked(held.job, terminated=True)
        elif outcome.state == states.REJECTED:
            signals.task_rejected.send(
                None, message=held.job.message, exc=Reject(outcome.summary, outcome.meta.get("requeue", False))
            )
        self._report_outcome(held.job.message, outcome)
        self._add_final(outcome.updates)
        self._starting.pop(held.job.message.id, None)  # ignored results leave no STARTED behind
        if held.acked:
            self._release()
        elif outcome.state == states.REJECTED and outcome.meta.get("requeue"):
            self._requeue([held.delivery])
        elif outcome.state == states.REJECTED or (
            outcome.state == states.FAILURE and not self.app.conf.task_acks_on_failure_or_timeout
        ):
            verb = "rejected" if outcome.state == states.REJECTED else "failed"
            self._dead_letter(held.delivery, f"task {verb}: {outcome.summary}", log=False)
        else:
            self._ack(held.delivery)

    def _lost(self, event: Lost) -> None:
        if event.job_id not in self.held:
            return
        self._send_early_ack(event.job_id)
        held = self.held.pop(event.job_id)
        job = held.job
        policy = self._policy(job.message.task)
        if not held.acked and policy.acks_late and policy.reject_on_worker_lost:
            logger.error(
                "Process running %s[%s] was lost (%s): returning it to the queue",
                job.message.display_name,
                job.message.id,
                event.error,
            )
            self._materialize_start(job.message.id)  # the run that died stays in the history
            self._requeue([held.delivery], redelivery=True)
            return
        error = TaskRevokedError("terminated") if held.terminated else event.error
        outcome = failure_outcome(self.app, job, error)
        if held.terminated:
            outcome = replace(outcome, state=states.REVOKED, updates=self._revoked_updates(job))
            self._signal_revoked(job, terminated=True)
        self._report_outcome(job.message, outcome)
        self._add_final(outcome.updates)
        if held.acked:
            self._release()
        else:
            self._ack(held.delivery)

    def _add_final(self, updates: Sequence[StateUpdate]) -> None:
        """Queue a task's final writes, its STARTED folded in as a history entry when still unwritten."""
        for update in updates:
            start = self._starting.pop(update.task_id, None)
            if start is not None:
                job, pid, at = start
                entry = self.app.backend.encode_history(
                    states.STARTED, history_entry(job, pid=pid, name=job.message.task), at
                )
                update = StateUpdate(
                    update.task_id, update.state, update.meta, (entry, *update.history), update.expires_at,
                    update.reply_to,
                )  # fmt: skip
            self._updates.append(update)

    def _materialize_start(self, task_id: str) -> None:
        """Queue a pending STARTED as a write of its own (the task is still running)."""
        start = self._starting.pop(task_id, None)
        if start is not None:
            job, pid, at = start
            self._updates.append(
                self.app.backend.make_update(
                    task_id,
                    states.STARTED,
                    {"pid": pid, "hostname": self.hostname},
                    history=history_entry(job, pid=pid, name=job.message.task),
                    now=at,
                    reply_to=job.message.reply_to,
                )
            )

    def _report_outcome(self, message: Message, outcome: Outcome) -> None:
        """The outcome's log line, and its task event with -E."""
        if self._send_events:
            kind = _EVENT_OF_STATE.get(outcome.state, "failed")
            detail = {"result": outcome.summary} if kind == "succeeded" else {"exception": outcome.summary}
            self._event(kind, message, runtime=outcome.runtime, **detail)
        name, task_id = message.display_name, message.id
        if outcome.state == states.SUCCESS:
            logger.info("Task %s[%s] succeeded in %.2fs: %s", name, task_id, outcome.runtime, outcome.summary)
        elif outcome.state == states.RETRY:
            logger.info("Task %s[%s] retry: %s", name, task_id, outcome.summary)
        elif outcome.state == states.IGNORED:
            logger.info("Task %s[%s] ignored", name, task_id)
        elif outcome.state == states.REJECTED:
            requeue = "requeued" if outcome.meta.get("requeue") else "dead-lettered"
            logger.info("Task %s[%s] rejected (%s): %s", name, task_id, requeue, outcome.summary)
        elif outcome.expected:
            logger.info("Task %s[%s] raised expected: %s", name, task_id, outcome.summary)
        else:
            logger.error(
                "Task %s[%s] raised unexpected: %s\n%s",
                name,
                task_id,
                outcome.summary,
                (outcome.traceback or "").rstrip(),
            )

    # -- decisions shared by the handlers --------------------------------------------------------
    def _policy(self, name: str) -> _Policy:
        """A task's worker-side options, resolved against the settings once per worker."""
        policy = self._policies.get(name)
        if policy is None:
            task, conf = self.app.tasks.get(name), self.app.conf
            rate = self._rate_limits.get(name) or option(task, "rate_limit", conf.task_default_rate_limit)
            policy = self._policies[name] = _Policy(
                acks_late=bool(option(task, "acks_late", conf.task_acks_late)),
                track_started=bool(option(task, "track_started", conf.task_track_started)),
                reject_on_worker_lost=bool(option(task, "reject_on_worker_lost", conf.task_reject_on_worker_lost)),
                rate=None if conf.worker_disable_rate_limits else parse_rate(rate),
            )
        return policy

    def _revoked_updates(self, job: Job) -> tuple[StateUpdate, ...]:
        error = TaskRevokedError("terminated")
        update = self.app.backend.make_update(
            job.message.id, states.REVOKED, error, history=history_entry(job), reply_to=job.message.reply_to
        )
        return (update,)

    def _end_now(self, delivery: Delivery, job: Job, state: str, error: BaseException) -> None:
        """End a task without running it (revoked, expired)."""
        self._updates.append(
            self.app.backend.make_update(
                job.message.id, state, error, history=history_entry(job), reply_to=job.message.reply_to
            )
        )
        dedup.task_ended(self.app, job.message.headers)
        self._event("revoked", job.message, exception=repr(error))
        self._ack(delivery)

    def _rate_limit_wait(self, name: str) -> float:
        """Seconds until this task may start under its rate limit (0: now). The bucket is in the broker."""
        rate = self._policy(name).rate
        if rate is None:
            return 0.0
        try:
            return self.app.broker.take_token(f"rate:{name}", rate)
        except BrokerError as exc:
            logger.error("Could not take a rate-limit token for %s (running it anyway): %s", name, exc)
            return 0.0

    def _fail_now(self, delivery: Delivery, message: Message, error: BaseException, job: Job | None = None) -> None:
        job = job or Job(0, message, delivery.queue, self.hostname)
        self._updates.extend(failure_outcome(self.app, job, error).updates)
        dedup.task_ended(self.app, message.headers)
        self._event("failed", message, exception=repr(error))
        self._ack(delivery)

    def _ack(self, delivery: Delivery) -> None:
        self._acks.append(delivery)
        self._release()

    def _release(self) -> None:
        # Given back to the fetcher once per batch, in _flush: one wake-up, not one per task.
        self._freed_slots += 1

    def _requeue(self, deliveries: list[Delivery], delay: float = 0.0, redelivery: bool = False) -> None:
        if not deliveries:
            return
        try:
            self.app.broker.requeue(deliveries, delay, redelivery=redelivery)
        except BrokerError as exc:
            logger.error("Could not requeue %d deliveries (their leases will lapse instead): %s", len(deliveries), exc)
        if self.fetcher is not None:
            self.fetcher.release(len(deliveries))

    def _fail_to_dead_letters(
        self, delivery: Delivery, job: Job, error: BaseException, reason: str, log: bool = True
    ) -> None:
        """The task ends FAILURE with `error` and its message goes to the dead letters with `reason`."""
        self._updates.extend(failure_outcome(self.app, job, error).updates)
        self._dead_letter(delivery, reason, log=log)

    def _dead_letter(self, delivery: Delivery, reason: str, log: bool = True) -> None:
        if log:
            logger.error("Moving message from queue %r to the dead-letter store: %s", delivery.queue, reason)
        try:
            self.app.broker.dead_letter(delivery, reason)
        except BrokerError as exc:
            logger.error("Could not dead-letter a message: %s", exc)
        self._release()

    # -- I/O ------------------------------------------------------------------------------------
    def _flush(self) -> None:
        """Hand the batch's results and acks to the writer (results first: a crash between reruns a task)."""
        if self._freed_slots and self.fetcher is not None:
            self.fetcher.release(self._freed_slots)
            self._freed_slots = 0
        if self._starting or self._early_acks:
            due = time.time() - STARTED_GRACE_SECONDS
            for task_id in [t for t, (_, _, at) in self._starting.items() if at <= due]:
                self._materialize_start(task_id)
            for job_id in [j for j, at in self._early_acks.items() if at <= due]:
                self._send_early_ack(job_id)
        if self._updates or self._acks or self._events:
            assert self.writer is not None
            # With deliveries or reports waiting, or jobs queued in the pool, the loop has
            # better things to do than wait for the store: the writer's thread writes.
            assert self.pool is not None
            idle = self.inbox.empty() and not self.pool.queued()
            self.writer.submit(self._updates, self._acks, self._events, inline=idle)
            self._updates, self._acks, self._events = [], [], []

    def _event(self, kind: str, message: Message, **fields: Any) -> None:
        if self._send_events:
            event = {"type": f"task-{kind}", "uuid": message.id, "name": message.task,
                     "hostname": self.hostname, "timestamp": time.time(), **fields}  # fmt: skip
            self._events.append(json.dumps(event, default=repr).encode())

    def _unacked_count(self) -> int:
        return sum(1 for h in self.held.values() if not h.acked)

    def _written(self, updates: Sequence[StateUpdate]) -> None:
        """On the writer's thread, once results are stored: count the chord header parts that ended."""
        for update in updates:
            if update.state in states.READY_STATES:
                chord = self._chord_parts.pop(update.task_id, None)
                if chord is not None:
                    chord_part_done(self.app, *chord)

    def _renew_leases(self) -> None:
        # A snapshot: the main loop changes `held` meanwhile (list() of a dict view is atomic in CPython).
        mine = [h.delivery for h in list(self.held.values()) if not h.acked]
        if not mine:
            return
        try:
            lost = self.app.broker.renew(mine)
        except BrokerError as exc:
            logger.error("Could not renew %d leases: %s", len(mine), exc)
            return
        for delivery in lost:
            logger.warning("Lease on a message from queue %r was lost: another worker may run it", delivery.queue)

    def _check_terminations(self) -> None:
        """Ask the broker whether a running task was revoked with terminate=True."""
        running = {h.job.message.id: h.job.id for h in list(self.held.values()) if h.started and not h.terminated}
        if not running:
            return
        try:
            revoked = self.app.broker.revoked(list(running))
        except BrokerError as exc:
            logger.error("Could not check revocations: %s", exc)
            return
        for task_id, raw in revoked.items():
            info = json.loads(raw)
            if info.get("terminate"):
                self.inbox.post(_Terminate(running[task_id], int(info.get("signal", signal.SIGTERM))))

    def _check_rate_limits(self) -> None:
        try:
            limits = {name: raw.decode() for name, raw in self.app.broker.kv_items(RATE_LIMITS).items()}
        except BrokerError:
            return  # the next check will tell; the fetcher already logs a lost broker
        if limits != self._rate_limits_seen:
            self._rate_limits_seen = dict(limits)
            for name, rate in list(limits.items()):
                try:
                    parse_rate(rate)
                except ValueError as exc:  # written by something other than control.rate_limit
                    logger.error("Ignoring the rate limit set for %s: %s", name, exc)
                    del limits[name]
            self.inbox.post(_RateLimits(limits))

    def _heartbeat(self) -> None:
        info = {
            "hostname": self.hostname, "pid": os.getpid(), "pool": self.pool_name,
            "concurrency": self.concurrency, "queues": self.queues, "active": len(self.held),
            "processed": self.processed, "version": __version__, "timestamp": time.time(),
            "tasks": sorted(name for name in self.app.tasks if not name.startswith("conveyor.")),
        }  # fmt: skip
        try:
            self.app.broker.register_worker(self.hostname, json.dumps(info).encode(), HEARTBEAT_SECONDS * 3)
        except BrokerError as exc:
            logger.error("Could not send heartbeat: %s", exc)
        else:
            signals.heartbeat_sent.send(self)

    def _cleanup_results(self) -> None:
        try:
            removed = self.app.backend.cleanup()
        except BackendError as exc:
            logger.error("Could not clean up expired results: %s", exc)
            return
        if removed:
            logger.info("Removed %d expired results", removed)

    def _warn_unconsumed_default_queue(self) -> None:
        default = self.app.conf.task_default_queue
        if default not in self.queues:
            logger.warning(
                "This worker does not consume the default queue %r (it consumes %s): tasks with no "
                "route will wait there until a worker consumes it (-Q %s)",
                default, ", ".join(self.queues), default,
            )  # fmt: skip
