"""The asyncio pool (`-P asyncio`): `async def` tasks interleaved on one event loop.

The loop runs on a thread of the worker process and keeps up to
`concurrency` async tasks in flight: each is awaited in an asyncio task of its
own, so one that waits on I/O leaves the loop to the others. Plain (sync)
tasks never block the loop: they go to a thread pool beside it (at most
`MAX_SYNC_THREADS` threads), which gives them the threads pool's behaviour.

Time limits of an async task: past its hard limit it is cancelled and ends
FAILURE with TimeLimitExceeded; past its soft limit it is cancelled too (the
task sees `asyncio.CancelledError`, and can clean up) and, unless it catches
that and returns, ends FAILURE with SoftTimeLimitExceeded. A revoke with
terminate=True cancels it the same way.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections import deque
from typing import TYPE_CHECKING

from conveyor.exceptions import SoftTimeLimitExceeded, TaskRevokedError, TimeLimitExceeded
from conveyor.execution import Job, execute_async, failure_outcome, time_limits
from conveyor.worker.pools import Emit, Finished, Lost, ThreadPool, reporter, updater

if TYPE_CHECKING:
    from conveyor.app import Conveyor

logger = logging.getLogger("conveyor.worker")

#: Threads for the plain tasks of an asyncio worker (its concurrency is for async ones).
MAX_SYNC_THREADS = 8


class AsyncioPool:
    """Async tasks on one event loop, sync tasks on a few threads beside it."""

    inline_reports = False  # a report handled on the loop would hold up every task on it
    runs_here = False

    def __init__(self, app: Conveyor, concurrency: int) -> None:
        self.app = app
        self.concurrency = concurrency
        self._sync = ThreadPool(app, min(concurrency, MAX_SYNC_THREADS))
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name="conveyor-asyncio", daemon=True)
        self._emit: Emit | None = None
        # Jobs waiting for a slot, and the running ones: changed on the loop, read by shutdown/join.
        self._lock = threading.Lock()
        self._waiting: deque[Job] = deque()
        self._running: dict[int, asyncio.Task[None]] = {}
        self._why_cancelled: dict[int, BaseException] = {}
        self._wake_pending = False
        self._all_done = threading.Condition(self._lock)

    # -- Pool --------------------------------------------------------------------------------
    def start(self, emit: Emit) -> None:
        self._emit = emit
        self._sync.start(emit)
        self._thread.start()

    def submit(self, job: Job) -> None:
        if not self.app.tasks[job.message.task].is_async:
            self._sync.submit(job)
            return
        with self._lock:
            self._waiting.append(job)
            # One wake-up of the loop for a whole batch of submissions, not one per job.
            wake, self._wake_pending = not self._wake_pending, True
        if wake:
            self._loop.call_soon_threadsafe(self._dispatch)

    def queued(self) -> int:
        return len(self._waiting) + self._sync.queued()

    def shutdown(self) -> list[Job]:
        with self._lock:
            pending = list(self._waiting)
            self._waiting.clear()
        return pending + self._sync.shutdown()

    def join(self, timeout: float | None = None) -> None:
        with self._all_done:
            self._all_done.wait_for(lambda: not self._running, timeout)
        self._sync.join(timeout)
        self._stop_loop()

    def terminate(self) -> None:
        self.shutdown()
        for job_id in list(self._running):
            self.kill(job_id, 0)
        self._sync.terminate()
        with self._all_done:  # cancelled tasks report first, then the loop goes
            self._all_done.wait_for(lambda: not self._running, 5)
        self._stop_loop()

    def _stop_loop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)

    def resize(self, concurrency: int) -> None:
        self.concurrency = concurrency
        self._sync.resize(min(concurrency, MAX_SYNC_THREADS))
        self._loop.call_soon_threadsafe(self._dispatch)

    def processes(self) -> list[int]:
        return [os.getpid()]

    def run_here(self, job: Job) -> None:
        raise NotImplementedError(f"{type(self).__name__} runs jobs on threads or processes of its own")

    def kill(self, job_id: int, signum: int) -> None:
        if job_id in self._running:
            self._loop.call_soon_threadsafe(self._cancel, job_id, TaskRevokedError("terminated"))
        else:
            self._sync.kill(job_id, signum)

    # -- on the loop ---------------------------------------------------------------------------
    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    def _dispatch(self) -> None:
        with self._lock:
            self._wake_pending = False
            while self._waiting and len(self._running) < self.concurrency:
                job = self._waiting.popleft()
                self._running[job.id] = self._loop.create_task(self._run(job))

    async def _run(self, job: Job) -> None:
        emit = self._emit
        assert emit is not None
        hard, soft = time_limits(self.app, job)
        timer = None
        if soft:
            timer = self._loop.call_later(soft, self._cancel, job.id, SoftTimeLimitExceeded("soft time limit"))
        try:
            try:
                async with asyncio.timeout(hard):
                    outcome = await execute_async(self.app, job, reporter(emit, job.id), on_update=updater(emit))
            except TimeoutError:
                error = TimeLimitExceeded(f"task exceeded its hard time limit of {hard}s")
                outcome = failure_outcome(self.app, job, error, runtime=float(hard or 0))
            except asyncio.CancelledError:
                reason = self._why_cancelled.get(job.id)
                if reason is None:  # the loop itself is going away
                    raise
                outcome = failure_outcome(self.app, job, reason)
            emit(Finished(outcome))
        except BaseException as exc:  # a bug of ours, not the task's: never lose the job silently
            logger.exception("Internal error running %s[%s]", job.message.task, job.message.id)
            emit(Lost(job.id, exc))
        finally:
            if timer is not None:
                timer.cancel()
            self._why_cancelled.pop(job.id, None)
            with self._lock:
                self._running.pop(job.id, None)
                if not self._running:
                    self._all_done.notify_all()
            self._dispatch()

    def _cancel(self, job_id: int, reason: BaseException) -> None:
        # Again each time: a task that caught its soft limit's cancellation can still be terminated.
        task = self._running.get(job_id)
        if task is not None:
            self._why_cancelled[job_id] = reason
            task.cancel(str(reason))
