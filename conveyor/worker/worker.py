"""The worker: fetch, decide, run, record, acknowledge.

One thread (`Worker.run`) owns every decision. The fetcher thread and the
pool report to it through its inbox (`worker/inbox.py`); it takes everything
that is waiting and handles it as a batch, whose results and acks the writer
thread (`worker/writer.py`) sends in one backend round trip and one broker
round trip: under load batches grow. On an idle worker the reporting thread
handles its own event under the inbox's lock and the loop is not woken.

Everything beyond that cycle is a feature hook (`worker/hooks.py`), listed in
`worker/features.py`: this module knows none of them. When and how a task's
STARTED and early ack are written is `worker/progress.py`.
"""

from __future__ import annotations

import itertools
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar, Union

from conveyor import signals, states
from conveyor.brokers.base import Delivery
from conveyor.exceptions import BrokerError, ContentDisallowed, DecodeError, Reject, TaskRevokedError
from conveyor.execution import Job, Outcome, context_for, failure_outcome, history_entry, option
from conveyor.messages import Envelope, Message
from conveyor.serialization import accepted_content_types
from conveyor.worker.consumer import FETCH_TIMEOUT, Fetcher
from conveyor.worker.features import features
from conveyor.worker.hooks import TICK_SECONDS, Held, Hook, Hooks
from conveyor.worker.inbox import Inbox
from conveyor.worker.pool_factory import create_pool
from conveyor.worker.pools import Finished, Lost, Pool, PoolEvent, Started, Updated
from conveyor.worker.progress import STARTED_GRACE_SECONDS, Progress
from conveyor.worker.writer import Writer

if TYPE_CHECKING:
    from conveyor.app import Conveyor

logger = logging.getLogger("conveyor.worker")

H = TypeVar("H", bound=Hook)

#: Default concurrency of the asyncio pool: async tasks in flight on its loop.
ASYNCIO_CONCURRENCY = 100
#: Most events handled (and written) as one batch.
MAX_BATCH = 2000
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
class _Failed:
    """Handling an event on the fetcher's or a pool's thread raised: the loop raises it."""

    error: Exception


_Event = Union[_Delivered, _Stop, _Terminate, _Failed, PoolEvent]


class _Policy(NamedTuple):
    acks_late: bool
    track_started: bool
    reject_on_worker_lost: bool


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
        autoscale: tuple[int, int] | None = None,
        hooks: Sequence[Hook] | None = None,
    ) -> None:
        """`autoscale`: (max, min) concurrency. `hooks`: the features (default: those
        `worker/features.py` lists for `app`)."""
        conf = app.conf
        self.app = app
        self.queues = list(queues or app.default_queues())
        self.pool_name = pool or conf.worker_pool
        # The solo pool runs one task at a time, whatever -c says; an event loop holds many.
        default = ASYNCIO_CONCURRENCY if self.pool_name == "asyncio" else os.cpu_count() or 1
        self.concurrency = 1 if self.pool_name == "solo" else concurrency or conf.worker_concurrency or default
        if autoscale is not None:
            self.concurrency = autoscale[1]
        self.hostname = hostname or f"conveyor@{socket.gethostname()}"
        self.multiplier = conf.worker_prefetch_multiplier if prefetch_multiplier is None else prefetch_multiplier
        # 0 means no limit, as in Celery; a bound still keeps one fetch reasonable.
        self.prefetch = (
            (autoscale[0] if autoscale else self.concurrency) * self.multiplier if self.multiplier else 10_000
        )
        self.accept = accepted_content_types(conf.accept_content)
        self.hooks = Hooks(features(app, beat=beat, autoscale=autoscale) if hooks is None else hooks)
        self.inbox: Inbox[_Event] = Inbox(self._handle_batch, MAX_BATCH)
        # The loop went to sleep for longer than a task's grace: a delivery handled by the
        # fetcher's thread meanwhile has to wake it for the task's deadlines.
        self._loop_sleeps_long = False
        self._last_finished = 0.0
        # An idle solo worker's one delivery, run by the fetcher's thread (their only user).
        self._may_run_here = False
        self._run_here: Job | None = None
        self.held: dict[int, Held] = {}
        self.processed = 0
        self._job_ids = itertools.count(1)
        self._policies: dict[str, _Policy] = {}
        self._freed_slots = 0
        self._events: list[bytes] = []
        self._stopping = False
        self._cold = False
        self.progress = Progress(app.backend, self.hostname)
        self.pool: Pool | None = None
        self.fetcher: Fetcher | None = None
        self.writer: Writer | None = None
        self.ready = threading.Event()
        self._done = threading.Event()

    # -- what hooks may call --------------------------------------------------------------
    def stop(self, cold: bool = False) -> None:
        """Ask the worker to stop (thread- and signal-safe)."""
        self.inbox.post(_Stop(cold))

    def terminate(self, job_id: int, signum: int) -> None:
        """Stop a running job with a signal (thread-safe); it ends REVOKED."""
        self.inbox.post(_Terminate(job_id, signum))

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
        if self.fetcher is not None:
            self.fetcher.release(len(deliveries))

    def write_event(self, event: bytes) -> None:
        """A monitoring event to write with this batch."""
        self._events.append(event)

    def signal_revoked(self, held: Held, terminated: bool = False, expired: bool = False) -> None:
        if signals.task_revoked.receivers:
            signals.task_revoked.send(
                self.app.tasks.get(held.job.message.task), request=context_for(held.job), terminated=terminated,
                signum=None, expired=expired,
            )  # fmt: skip

    def resize(self, concurrency: int) -> None:
        """Run up to `concurrency` tasks at once, and prefetch for as many (thread-safe)."""
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency}")
        assert self.pool is not None and self.fetcher is not None
        self.pool.resize(concurrency)
        self.concurrency = concurrency
        if self.multiplier:
            self.prefetch = max(self.prefetch, concurrency * self.multiplier)
            self.fetcher.resize(self.prefetch)

    def consume(self, queues: Sequence[str]) -> None:
        """Consume these queues from now on (thread-safe)."""
        assert self.fetcher is not None
        self.queues = list(queues)
        self.fetcher.consume(self.queues)

    def feature(self, kind: type[H]) -> H | None:
        """The hook of this kind, if the worker has one."""
        return next((h for h in self.hooks.all if isinstance(h, kind)), None)

    def running(self) -> list[Held]:
        """The tasks running now (a snapshot; any thread)."""
        return [h for h in list(self.held.values()) if h.started]

    def unacknowledged(self) -> list[Held]:
        """The deliveries held and not yet acknowledged (a snapshot; any thread)."""
        # list() of a dict view is atomic in CPython: the loop changes `held` meanwhile.
        return [h for h in list(self.held.values()) if not h.acked]

    # -- lifecycle ------------------------------------------------------------------------
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
        self.writer = Writer(backend, broker, written=self.hooks.stored if self.hooks.storing else None)
        self.writer.start()
        self.pool = create_pool(self.pool_name, app, self.concurrency)
        self.pool.start(self._from_pool if self.pool.inline_reports else self.inbox.post)
        for hook in self.hooks.all:
            hook.start(self)
        self.fetcher = Fetcher(broker, self.queues, self.prefetch, self._from_fetcher)
        self.fetcher.start()
        threading.Thread(target=self._housekeeping, name="conveyor-housekeeping", daemon=True).start()
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
        assert self.pool is not None and self.writer is not None
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
        return max(0.0, min(timeout, self.progress.next_due() - time.time()))

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
        assert self.pool is not None
        self._may_run_here = self.pool.runs_here and len(deliveries) == 1
        self._post_or_handle(_Delivered(deliveries))
        job, self._run_here, self._may_run_here = self._run_here, None, False
        if job is not None:
            # One task at a time, on the thread that received it: no wake-up of the pool's
            # thread. The fetcher takes nothing more meanwhile, which solo could not run
            # before this one ends anyway.
            self.pool.run_here(job)

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
        """The hooks' periodic work, on a thread of its own: lease renewals keep their rhythm
        however busy the loop is."""
        while not self._done.wait(TICK_SECONDS):
            self.hooks.tick(time.monotonic())

    def _finish(self) -> None:
        assert self.pool is not None and self.fetcher is not None and self.writer is not None
        self.inbox.close()  # what the pool and fetcher report from now on waits here
        self.fetcher.stop()
        if self._cold or not self._stopping:  # a cold shutdown, or the loop failed
            unacked = [h.delivery for h in self.unacknowledged()]
            logger.warning(
                "%s: returning %d unacknowledged tasks to the queue",
                "Cold shutdown" if self._cold else "Stopping after an error",
                len(unacked),
            )
            self.pool.terminate()
            self.give_back(unacked)
        else:
            self.pool.join(10)
        self.fetcher.join(FETCH_TIMEOUT + 5)
        # Whatever was fetched after the loop ended goes back to the queue.
        for event in self.inbox.leftovers():
            if isinstance(event, _Delivered):
                self.give_back(event.deliveries)
        self._flush()
        self.writer.send_inline_acks()
        self.writer.close(timeout=60)
        for hook in self.hooks.all:
            hook.stop()
        logger.info("%s stopped after %d tasks", self.hostname, self.processed)

    def _begin_warm_shutdown(self) -> None:
        assert self.pool is not None and self.fetcher is not None
        self._stopping = True
        self.fetcher.stop()
        returned = [self.held.pop(job.id).delivery for job in self.pool.shutdown()]
        self.give_back(returned)
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
                self.give_back(event.deliveries)
            else:
                self._receive(event.deliveries)
        elif isinstance(event, Started):
            self._started(event)
        elif isinstance(event, Updated):
            self.progress.update(event.update)
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
        elif isinstance(event, _Failed):
            raise event.error  # a bug of ours: the worker stops, as when its loop's own handling fails
        elif isinstance(event, _Stop):
            self._stop(event)

    def _stop(self, event: _Stop) -> None:
        cold = event.cold or self._stopping
        signals.worker_shutting_down.send(self.hostname, sig=event.signal, how="Cold" if cold else "Warm", exitcode=0)
        if cold:
            self._cold = True
        else:
            self._begin_warm_shutdown()

    def _receive(self, deliveries: list[Delivery]) -> None:
        arrivals = []
        for delivery in deliveries:
            message = self._decode(delivery)
            if message is not None:
                job = Job(next(self._job_ids), message, delivery.queue, self.hostname, delivery.redelivered)
                arrivals.append(Held(job, delivery))
        assert self.pool is not None
        for held in self.hooks.admit(arrivals):
            job = held.job
            self.held[job.id] = held
            self.hooks.received(held)
            # An idle solo worker's only task (see _from_fetcher). Held alone: a delivery the loop
            # took just before may have gone to the pool's thread, and solo runs one at a time.
            if self._may_run_here and len(self.held) == 1 and self.fetcher and self.fetcher.is_current_thread():
                self._run_here = job
            else:
                self.pool.submit(job)

    def _decode(self, delivery: Delivery) -> Message | None:
        """The delivery's message; None when it was dealt with (dead-lettered or refused)."""
        try:
            envelope = Envelope.parse(delivery.body)
        except DecodeError as exc:
            self._dead_letter(delivery, f"undecodable message: {exc}")
            return None
        try:
            return envelope.message(self.accept)
        except (ContentDisallowed, DecodeError) as exc:
            # The headers named the task: its caller learns why instead of waiting for ever.
            stub = Held(Job(0, Message(task=envelope.task_name or "?", id=envelope.task_id or "?"), delivery.queue,
                            self.hostname), delivery)  # fmt: skip
            name = f"{stub.job.message.task}[{stub.job.message.id}]"
            if isinstance(exc, ContentDisallowed):
                logger.error("Task %s refused: %s", name, exc)
                self.refuse(stub, states.FAILURE, exc)
            else:
                logger.error("Moving message from queue %r to the dead-letter store: task %s: %s",
                             delivery.queue, name, exc)  # fmt: skip
                error = DecodeError(f"undecodable message: {exc}")
                self.refuse(stub, states.FAILURE, error, dead_letter=f"task {name}: {exc}")
        return None

    def _started(self, event: Started) -> None:
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

    def _finished(self, outcome: Outcome) -> None:
        held = self.held.pop(outcome.job_id, None)
        if held is None:
            return
        self.progress.ack_now(held)
        self.processed += 1
        self._last_finished = time.monotonic()
        if held.terminated:
            outcome = self._revoked(held, outcome)
        elif outcome.state == states.REJECTED:
            requeue = outcome.meta.get("requeue", False)
            signals.task_rejected.send(None, message=held.job.message, exc=Reject(outcome.summary, requeue))
        self._end(held, outcome)
        if held.acked:
            self._release()
        elif outcome.state == states.REJECTED and outcome.meta.get("requeue"):
            self.give_back([held.delivery])
        elif outcome.state == states.REJECTED or (
            outcome.state == states.FAILURE and not self.app.conf.task_acks_on_failure_or_timeout
        ):
            verb = "rejected" if outcome.state == states.REJECTED else "failed"
            self._dead_letter(held.delivery, f"task {verb}: {outcome.summary}", log=False)
        else:
            self._ack(held.delivery)

    def _lost(self, event: Lost) -> None:
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
            self._release()
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
        self.hooks.finished(held, outcome)
        self.progress.final(outcome.updates)
        self.progress.forget(held.job.message.id)  # ignored results leave no STARTED behind

    # -- decisions shared by the handlers --------------------------------------------------------
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
        self._release()

    def _release(self) -> None:
        # Given back to the fetcher once per batch, in _flush: one wake-up, not one per task.
        self._freed_slots += 1

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
        updates, acks = self.progress.take_due()
        if updates or acks or self._events:
            assert self.writer is not None and self.pool is not None
            # With deliveries or reports waiting, or jobs queued in the pool, the loop has
            # better things to do than wait for the store: the writer's thread writes.
            idle = self.inbox.empty() and not self.pool.queued()
            self.writer.submit(updates, acks, self._events, inline=idle)
            self._events = []

    def _warn_unconsumed_default_queue(self) -> None:
        default = self.app.conf.task_default_queue
        if default not in self.queues:
            logger.warning(
                "This worker does not consume the default queue %r (it consumes %s): tasks with no "
                "route will wait there until a worker consumes it (-Q %s)",
                default, ", ".join(self.queues), default,
            )  # fmt: skip
