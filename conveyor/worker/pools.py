"""Execution pools: where a worker runs its tasks.

Every pool implements `Pool`: it takes jobs, runs them with
`execution.execute`, and reports through one callback:

- `Started(job_id, pid)` when a task begins (the worker records STARTED and,
  without acks_late, acknowledges);
- `Finished(outcome)` when it ends;
- `Updated(update)` for the task's own `update_state` calls (kept in order);
- `Lost(job_id, error)` when the process running it died or was killed.

`threads` runs tasks on threads of the worker process; `solo` is one such
thread (one task at a time); `prefork` (`worker/prefork.py`) runs them in
child processes; `asyncio` (`worker/asyncpool.py`) interleaves `async def`
tasks on one event loop. The other pools run an `async def` task to the end
on an event loop of the thread or child that took it. `gevent` and `eventlet`
are accepted names for `threads`: Conveyor does not monkey-patch the
interpreter, so green-thread pools would silently block; threads give the
same I/O concurrency without patching.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, Union

from conveyor.backends.base import StateUpdate
from conveyor.exceptions import SoftTimeLimitExceeded, TaskRevokedError
from conveyor.execution import Job, Outcome, execute, time_limits

if TYPE_CHECKING:
    from conveyor.app import Conveyor

logger = logging.getLogger("conveyor.worker")


@dataclass(slots=True)
class Started:
    job_id: int
    pid: int
    #: When the task started, where it runs: a prefork child's report may reach the worker after
    #: the task has already finished, and the history must say what happened first.
    at: float = field(default_factory=time.time)


@dataclass(slots=True)
class Finished:
    outcome: Outcome


@dataclass(slots=True)
class Updated:
    update: StateUpdate


@dataclass(slots=True)
class Lost:
    job_id: int
    error: BaseException


PoolEvent = Union[Started, Updated, Finished, Lost]
Emit = Callable[[PoolEvent], None]


class Pool(Protocol):
    """What the worker needs of a pool."""

    concurrency: int
    #: Whether the threads that report may handle a report themselves when the worker is
    #: idle (see `worker/inbox.py`): not an event loop, which other tasks share.
    inline_reports: bool
    #: Runs one task at a time, which an idle worker may run on the thread that received it
    #: (`run_here`): no hand-off to another thread (as Celery's solo pool runs on its consumer's).
    runs_here: bool

    def start(self, emit: Emit) -> None:
        """Start the pool's threads or processes; events go to `emit`."""

    def submit(self, job: Job) -> None:
        """Queue a job; it runs when a slot is free."""

    def queued(self) -> int:
        """How many submitted jobs wait for a slot (not started yet)."""

    def shutdown(self) -> list[Job]:
        """Stop taking jobs: return those not started; running ones finish."""

    def join(self, timeout: float | None = None) -> None:
        """Wait for running jobs to finish."""

    def terminate(self) -> None:
        """Stop now: kill what can be killed (cold shutdown)."""

    def kill(self, job_id: int, signum: int) -> None:
        """Stop one running job (revoke with terminate=True); it then reports Finished or Lost."""

    def run_here(self, job: Job) -> None:
        """Run a job on the calling thread, now (only where `runs_here`)."""

    def resize(self, concurrency: int) -> None:
        """Run up to `concurrency` jobs at once from now on (running ones finish)."""

    def processes(self) -> list[int]:
        """The ids of the processes that run tasks."""


def reporter(emit: Emit, job_id: int) -> Callable[[int], None]:
    def started(pid: int) -> None:
        emit(Started(job_id, pid))

    return started


class ThreadPool:
    """Tasks run on `concurrency` threads of the worker process."""

    inline_reports = True
    runs_here = False

    def __init__(self, app: Conveyor, concurrency: int) -> None:
        self.app = app
        self.concurrency = concurrency
        # Jobs waiting for a thread, and the threads waiting for a job (each on its own queue):
        # the one that went idle last gets the next job, so an idle worker keeps using one
        # thread whose connections and caches are warm, instead of taking turns.
        self._backlog: collections.deque[Job] = collections.deque()
        self._idle: list[queue.SimpleQueue[Job | None]] = []
        self._closed = False
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._live = 0  # threads serving, which a shrink brings down to `concurrency`
        self._emit: Emit | None = None
        self._running: dict[int, int] = {}  # job id -> ident of the thread running it
        self._running_lock = threading.Lock()

    def start(self, emit: Emit) -> None:
        self._emit = emit
        for _ in range(self.concurrency):
            self._add_thread()

    def _add_thread(self) -> None:
        thread = threading.Thread(target=self._serve, name=f"conveyor-pool-{len(self._threads)}", daemon=True)
        with self._lock:
            self._live += 1
            self._threads.append(thread)
        thread.start()

    def _serve(self) -> None:
        mine: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        try:
            while True:
                with self._lock:
                    if self._closed or self._live > self.concurrency:  # shut down, or the pool shrank
                        return
                    job = self._backlog.popleft() if self._backlog else None
                    if job is None:
                        self._idle.append(mine)
                if job is None:
                    job = mine.get()
                    if job is None:  # shut down, or the pool shrank
                        return
                self.run_here(job)
        finally:
            with self._lock:
                self._live -= 1

    def resize(self, concurrency: int) -> None:
        with self._lock:
            grow = concurrency - self.concurrency
            self.concurrency = concurrency
            # Idle threads leave at once; busy ones once their task ends (see _serve).
            leaving = [self._idle.pop() for _ in range(min(-grow, len(self._idle)))] if grow < 0 else []
        for idle in leaving:
            idle.put(None)
        for _ in range(grow):
            self._add_thread()

    def processes(self) -> list[int]:
        return [os.getpid()]

    def run_here(self, job: Job) -> None:
        """Run one job on this thread and report it."""
        emit = self._emit
        assert emit is not None
        try:
            outcome = execute(
                self.app, job, reporter(emit, job.id), on_update=updater(emit), interruptible=self._interruptible(job)
            )
        except BaseException as exc:  # a bug of ours, not the task's: never lose the job silently
            logger.exception("Internal error running %s[%s]", job.message.task, job.message.id)
            emit(Lost(job.id, exc))
        else:
            emit(Finished(outcome))

    @contextlib.contextmanager
    def _interruptible(self, job: Job) -> Iterator[None]:
        """Around the task's own code: the only place its soft limit or revocation is raised.

        An asynchronous exception is seen between Python bytecodes: a task
        blocked in a C call (a long sleep, a socket read) gets it when that
        call returns. Hard limits cannot stop a thread: use prefork for them.
        """
        ident = threading.get_ident()
        timer = None
        try:
            with self._running_lock:
                self._running[job.id] = ident
            soft = time_limits(self.app, job)[1]
            if soft:
                timer = threading.Timer(soft, self._interrupt, (job.id, SoftTimeLimitExceeded))
                timer.daemon = True
                timer.start()
            yield
        finally:
            # One that comes as the task ends has nothing left to stop: raised in what runs
            # next on this thread, it would end the pool's thread (and its slot with it).
            while True:
                try:
                    self._stop_interrupting(job.id, ident)
                    break
                except (SoftTimeLimitExceeded, TaskRevokedError):
                    continue
            if timer is not None:
                timer.cancel()

    def _interrupt(self, job_id: int, exception: type[BaseException]) -> None:
        """Raise `exception` in the thread running the job's task, if it still does."""
        with self._running_lock:
            ident = self._running.get(job_id)
            if ident is not None:
                _raise_in_thread(ident, exception)

    def _stop_interrupting(self, job_id: int, ident: int) -> None:
        with self._running_lock:
            self._running.pop(job_id, None)
            _raise_in_thread(ident, None)  # clears one still pending

    def kill(self, job_id: int, signum: int) -> None:
        # A thread cannot be killed: the task gets TaskRevokedError at its next bytecode.
        self._interrupt(job_id, TaskRevokedError)

    def submit(self, job: Job) -> None:
        with self._lock:
            if not self._idle:
                self._backlog.append(job)
                return
            thread = self._idle.pop()
        thread.put(job)

    def queued(self) -> int:
        return len(self._backlog)

    def shutdown(self) -> list[Job]:
        with self._lock:
            self._closed = True
            pending, idle = list(self._backlog), self._idle
            self._backlog.clear()
            self._idle = []
        for thread in idle:
            thread.put(None)
        return pending

    def join(self, timeout: float | None = None) -> None:
        for thread in list(self._threads):
            thread.join(timeout)

    def terminate(self) -> None:
        # Threads cannot be killed; they are daemons and end with the process.
        self.shutdown()


class SoloPool(ThreadPool):
    """One task at a time, in the worker process."""

    runs_here = True

    def __init__(self, app: Conveyor, concurrency: int = 1) -> None:
        super().__init__(app, 1)

    def resize(self, concurrency: int) -> None:
        raise ValueError("the solo pool runs one task at a time: use threads or prefork to resize")


def updater(emit: Emit) -> Callable[[StateUpdate], None]:
    def updated(update: StateUpdate) -> None:
        emit(Updated(update))

    return updated


def _raise_in_thread(ident: int, exception: type[BaseException] | None) -> None:
    """Make a thread raise `exception` at its next bytecode (None: clear one still pending)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(ident), ctypes.py_object(exception) if exception is not None else None
    )
