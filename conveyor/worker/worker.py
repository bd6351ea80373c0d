"""The worker: fetch, decide, run, record, acknowledge.

One thread (`Worker.run`) owns every decision. The fetcher thread and the
pool report to it through its inbox (`worker/inbox.py`); it takes everything
that is waiting and handles it as a batch, whose results and acks the writer
thread (`worker/writer.py`) sends in one backend round trip and one broker
round trip: under load batches grow. On an idle worker the reporting thread
handles its own event under the inbox's lock and the loop is not woken.

What becomes of each delivery is `worker/ledger.py`; everything beyond that
cycle is a feature hook (`worker/hooks.py`), listed in `worker/features.py`:
this module knows none of them.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Union

from conveyor import signals
from conveyor.brokers.base import Delivery
from conveyor.exceptions import BrokerError
from conveyor.execution import Job
from conveyor.worker.consumer import FETCH_TIMEOUT, Fetcher
from conveyor.worker.features import features
from conveyor.worker.hooks import TICK_SECONDS, Held, Hook, Hooks
from conveyor.worker.inbox import Inbox
from conveyor.worker.ledger import Ledger
from conveyor.worker.pool_factory import create_pool, default_concurrency
from conveyor.worker.pools import Finished, Lost, Pool, PoolEvent, Started, Updated
from conveyor.worker.progress import STARTED_GRACE_SECONDS
from conveyor.worker.writer import Writer

if TYPE_CHECKING:
    from conveyor.app import Conveyor

logger = logging.getLogger("conveyor.worker")

#: Most events handled (and written) as one batch.
MAX_BATCH = 2000
#: Under load the main loop pauses up to this long between batches, so that reports gather.
MAX_LINGER_SECONDS = 0.002
#: ... and for at most this share of the time the pool needs for the work queued in it.
LINGER_SHARE = 0.25


# What reaches the loop besides the pool's reports. _Failed: handling an event on the fetcher's
# or a pool's thread raised, and the loop raises it; _Stop.signal names the signal that asked.
class _Delivered(NamedTuple):
    deliveries: list[Delivery]


class _Stop(NamedTuple):
    cold: bool
    signal: str | None


class _Terminate(NamedTuple):
    job_id: int
    signum: int


class _Failed(NamedTuple):
    error: Exception


_Event = Union[_Delivered, _Stop, _Terminate, _Failed, PoolEvent]


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
        self.concurrency = default_concurrency(self.pool_name, conf.worker_concurrency, concurrency)
        if autoscale is not None:
            self.concurrency = autoscale[1]
        self.hostname = hostname or f"conveyor@{socket.gethostname()}"
        self.multiplier = conf.worker_prefetch_multiplier if prefetch_multiplier is None else prefetch_multiplier
        # 0 means no limit, as in Celery; a bound still keeps one fetch reasonable.
        self.prefetch = (
            (autoscale[0] if autoscale else self.concurrency) * self.multiplier if self.multiplier else 10_000
        )
        self.hooks = Hooks(features(app, beat=beat, autoscale=autoscale) if hooks is None else hooks)
        self.ledger = Ledger(app, self.hostname, self.hooks)
        self.inbox: Inbox[_Event] = Inbox(self._handle_batch, MAX_BATCH)
        # The loop went to sleep for longer than a task's grace: a delivery handled by the
        # fetcher's thread meanwhile has to wake it for the task's deadlines.
        self._loop_sleeps_long = False
        # An idle solo worker's one delivery, run by the fetcher's thread (their only user).
        self._may_run_here = False
        self._run_here: Job | None = None
        self._stopping = False
        self._cold = False
        #: True once the loop has ended: what hooks hold back for a later batch goes in the last one.
        self.closing = False
        self.pool: Pool | None = None
        self.fetcher: Fetcher | None = None
        self.writer: Writer | None = None
        self.ready = threading.Event()
        self._done = threading.Event()

    # -- what hooks may call --------------------------------------------------------------
    def stop(self, cold: bool = False) -> None:
        """Ask the worker to stop (thread- and signal-safe)."""
        self.inbox.post(_Stop(cold, None))

    def terminate(self, job_id: int, signum: int) -> None:
        """Stop a running job with a signal (thread-safe); it ends REVOKED."""
        self.inbox.post(_Terminate(job_id, signum))

    @property
    def held(self) -> dict[int, Held]:
        """The deliveries this worker holds, by job id (`ledger.py`)."""
        return self.ledger.held

    @property
    def processed(self) -> int:
        """How many tasks this worker has run."""
        return self.ledger.processed

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
        broker, backend = app.broker, app.backend
        self.writer = Writer(backend, broker, app.state, written=self.hooks.stored if self.hooks.storing else None)
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
        if self.held or time.monotonic() - self.ledger.last_finished < 1.0:
            # A task may start (and add a deadline) without waking the loop. A worker that
            # has been idle for a while sleeps longer, and its next delivery rings.
            timeout = STARTED_GRACE_SECONDS
        return max(0.0, min(timeout, self.ledger.progress.next_due() - time.time()))

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
        a chord's body) landed; a lost connection sends it again (Transport.confirm)."""
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
            unacked = [h.delivery for h in self.ledger.unacknowledged()]
            logger.warning(
                "%s: returning %d unacknowledged tasks to the queue",
                "Cold shutdown" if self._cold else "Stopping after an error",
                len(unacked),
            )
            self.pool.terminate()
            self.ledger.give_back(unacked)
        else:
            self.pool.join(10)
        self.fetcher.join(FETCH_TIMEOUT + 5)
        # Whatever was fetched after the loop ended goes back to the queue.
        for event in self.inbox.leftovers():
            if isinstance(event, _Delivered):
                self.ledger.give_back(event.deliveries)
        self.closing = True
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
        self.ledger.give_back(returned)
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
                self.ledger.give_back(event.deliveries)
            else:
                self._receive(event.deliveries)
        elif isinstance(event, Started):
            self.ledger.started(event)
        elif isinstance(event, Updated):
            self.ledger.progress.update(event.update)
        elif isinstance(event, Finished):
            self.ledger.finished(event.outcome)
        elif isinstance(event, Lost):
            self.ledger.lost(event)
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

    def _receive(self, deliveries: list[Delivery]) -> None:
        assert self.pool is not None
        for held in self.ledger.arrive(deliveries):
            # An idle solo worker's only task (see _from_fetcher). Held alone: a delivery the loop
            # took just before may have gone to the pool's thread, and solo runs one at a time.
            if self._may_run_here and len(self.held) == 1 and self.fetcher and self.fetcher.is_current_thread():
                self._run_here = held.job
            else:
                self.pool.submit(held.job)

    def _stop(self, event: _Stop) -> None:
        cold = event.cold or self._stopping
        signals.worker_shutting_down.send(self.hostname, sig=event.signal, how="Cold" if cold else "Warm", exitcode=0)
        if cold:
            self._cold = True
        else:
            self._begin_warm_shutdown()

    # -- I/O ------------------------------------------------------------------------------------
    def _flush(self) -> None:
        """Hand the batch's results and acks to the writer (results first: a crash between reruns a task)."""
        ledger = self.ledger
        self.hooks.flush()
        if ledger.freed and self.fetcher is not None:
            self.fetcher.release(ledger.freed)
            ledger.freed = 0
        updates, acks, events = ledger.progress.take_due()
        if updates or acks or events:
            assert self.writer is not None and self.pool is not None
            # With deliveries or reports waiting, or jobs queued in the pool, the loop has
            # better things to do than wait for the store: the writer's thread writes.
            idle = self.inbox.empty() and not self.pool.queued()
            self.writer.submit(updates, acks, events, inline=idle)
