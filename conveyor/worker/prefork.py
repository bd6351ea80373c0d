"""The prefork pool: tasks run in child processes forked from the worker.

A supervisor thread in the worker owns the children: it hands jobs to them
over a pipe, relays the child's Started/Finished reports (one selector,
registered once per child, watches every pipe and exit), kills a child whose
task passes its hard time limit (the task ends FAILURE with
TimeLimitExceeded), and replaces children that die or retire. A child retires
after `worker_max_tasks_per_child` tasks, or when its resident memory passes
`worker_max_memory_per_child` KiB, after finishing its task, so recycling
loses nothing. The soft time limit is a timer signal inside the child that
raises SoftTimeLimitExceeded in the task.

Both ways, what crosses a pipe goes in batches. While tasks are short, a child
holds a few jobs beyond the one it runs (about `AHEAD_SECONDS` of work at the
recent pace, at most `MAX_AHEAD`; none with `worker_prefork_ahead` off, as
`-O fair` sets it), so it starts the next without waiting for the worker,
which tops it up half a batch at a time; idle children get a job each first. A child's reports go as
one message per task: the end of one task with the start of the next. While
tasks are long a child holds only the one it runs, so no job waits behind a
long task while another child is free (a task far longer than those before it
can still hold up the few jobs sent ahead to its child). Jobs go ahead only
while small (`AHEAD_BYTES`): a pipe holds 64 KiB, and a worker blocked sending
to a child that is itself blocked sending a large result would wait for ever.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import selectors
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.reduction import ForkingPickler
from typing import TYPE_CHECKING, Any

from conveyor import signals
from conveyor.backends.base import StateUpdate
from conveyor.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded, WorkerLostError
from conveyor.execution import Job, execute, failure_outcome, time_limits
from conveyor.worker.pools import Emit, Finished, Lost, Started, Updated

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

    from conveyor.app import Conveyor

logger = logging.getLogger("conveyor.worker")


def resident_kib() -> int:
    """This process's resident memory in KiB."""
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") // 1024
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


class _Retiring:
    """Sent by a child before its last Finished: give it no more jobs."""


def _raise_soft_limit(signum: int, frame: Any) -> None:
    raise SoftTimeLimitExceeded("soft time limit exceeded")


#: Work a child holds beyond the task it runs, at the recent pace per task...
AHEAD_SECONDS = 0.002
#: ... and at most this many jobs.
MAX_AHEAD = 8
#: Jobs sent to a busy child at once are at most this big, pickled (see the module's docstring).
AHEAD_BYTES = 8192


class _Outbox:
    """A child's reports, sent together: the end of a task goes with the start of the next."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.waiting: list[Any] = []

    def send(self, report: Any = None) -> None:
        if report is not None:
            self.waiting.append(report)
        if self.waiting:
            self.conn.send(self.waiting)
            self.waiting = []

    def started(self, job_id: int) -> Callable[[int], None]:
        return lambda pid: self.send(Started(job_id, pid))


def _retirement_reason(done: int, max_tasks: int | None, max_memory_kib: int | None) -> str | None:
    if max_tasks and done >= max_tasks:
        return f"{done} tasks done (max tasks per child)"
    if max_memory_kib:
        resident = resident_kib()
        if resident > max_memory_kib:
            return f"{resident} KiB resident > {max_memory_kib} KiB (max memory per child)"
    return None


#: How often a child checks that the worker that forked it is still alive.
PARENT_CHECK_SECONDS = 0.2


def _die_with(parent: int) -> None:
    """Kill this child once its worker is gone (reparented): a SIGKILLed worker's delivery comes
    back to another worker, so an orphan finishing it would run the task twice. Polling the
    parent's pid, not PR_SET_PDEATHSIG, which fires when the forking *thread* ends."""
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_SECONDS)
    os.kill(os.getpid(), signal.SIGKILL)


def _child_main(
    app: Conveyor, conn: Connection, max_tasks: int | None, max_memory_kib: int | None, parent: int
) -> None:
    threading.Thread(target=_die_with, args=(parent,), name="conveyor-parent-watch", daemon=True).start()
    # Ctrl-C reaches the whole process group: only the worker decides what stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGALRM, _raise_soft_limit)
    signals.worker_process_init.send(None)
    app.on_after_fork.send(app)
    outbox, jobs, done = _Outbox(conn), deque[Job](), 0
    while True:
        if not jobs:
            outbox.send()  # about to wait: what happened goes now
            try:
                batch = conn.recv()
            except (EOFError, OSError):
                break
            if batch is None:
                break
            jobs.extend(batch)
        job = jobs.popleft()
        soft = time_limits(app, job)[1]
        if soft:
            signal.setitimer(signal.ITIMER_REAL, soft)
        try:
            outcome = execute(app, job, outbox.started(job.id), on_update=outbox.send)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        done += 1
        retire = _retirement_reason(done, max_tasks, max_memory_kib)
        if retire:
            logger.info("Child %d retiring: %s", os.getpid(), retire)
            outbox.waiting.append(_Retiring())  # the jobs it holds go back to the worker when it exits
        outbox.waiting.append(Finished(outcome))  # sent with the next start, or before waiting
        if retire:
            break
    outbox.send()
    conn.close()
    signals.worker_process_shutdown.send(None, pid=os.getpid(), exitcode=0)
    os._exit(0)


@dataclass
class _Child:
    process: BaseProcess
    conn: Connection
    jobs: deque[Job] = field(default_factory=deque)
    """Sent to it, in the order it runs them: the first is running once `started`."""
    deadline: float | None = None
    started: bool = False
    retiring: bool = False
    started_at: float = field(default_factory=time.monotonic)


class PreforkPool:
    inline_reports = True  # its reader thread has nothing else to do while the worker is idle
    runs_here = False

    def __init__(self, app: Conveyor, concurrency: int) -> None:
        self.app = app
        self.concurrency = concurrency
        self._context = multiprocessing.get_context("fork")
        self._children: list[_Child] = []
        self._pending: deque[Job] = deque()
        self._lock = threading.RLock()
        self._stopping = False
        self._emit: Emit | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        # Registered once, not rebuilt each turn: the supervisor wakes twice per task.
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._supervisor: threading.Thread | None = None
        self._runtime: float | None = None
        """Recent seconds per task (a moving average), once a task has finished."""

    # -- children ----------------------------------------------------------------------
    def _spawn(self) -> _Child:
        parent_conn, child_conn = self._context.Pipe()
        conf = self.app.conf
        process = self._context.Process(
            target=_child_main,
            args=(self.app, child_conn, conf.worker_max_tasks_per_child, conf.worker_max_memory_per_child, os.getpid()),
            daemon=True,
        )
        process.start()
        child_conn.close()
        child = _Child(process, parent_conn)
        self._children.append(child)
        self._selector.register(parent_conn, selectors.EVENT_READ, ("report", child))
        self._selector.register(process.sentinel, selectors.EVENT_READ, ("exit", child))
        return child

    def _dispatch(self) -> None:
        with self._lock:
            if not self._pending:
                return
            children = [c for c in self._children if not c.retiring]  # a dead one's send fails: jobs stay
            counts = [0] * len(children)
            left = len(self._pending)
            for i, child in enumerate(children):  # one each for the idle: no job waits while one is free
                if not child.jobs and left:
                    counts[i], left = 1, left - 1
            ahead = self._ahead()
            for i, child in enumerate(children):  # then, while tasks are short, work to go on with
                if left and ahead and len(child.jobs) <= ahead // 2:  # topped up half a batch at a time
                    extra = min(1 + ahead - len(child.jobs) - counts[i], left)
                    counts[i], left = counts[i] + extra, left - extra
            for child, count in zip(children, counts, strict=True):
                if count:
                    self._send(child, [self._pending.popleft() for _ in range(count)])

    def _ahead(self) -> int:
        """How many jobs a child may hold beyond the one it runs, at the recent pace."""
        runtime = self._runtime
        if not runtime or not self.app.conf.worker_prefork_ahead:
            return 0
        return min(MAX_AHEAD, int(AHEAD_SECONDS / runtime))

    def _send(self, child: _Child, batch: list[Job]) -> None:
        """Hand `batch` to `child` (lock held); what it cannot take goes back to the front."""
        data = ForkingPickler.dumps(batch)
        if len(data) > AHEAD_BYTES and (child.jobs or len(batch) > 1):
            # Only small jobs go ahead: a busy child takes none of these now, an idle one the first.
            keep = [] if child.jobs else batch[:1]
            self._pending.extendleft(reversed(batch[len(keep) :]))
            if not keep:
                return
            batch, data = keep, ForkingPickler.dumps(keep)
        if not child.jobs:
            child.deadline, child.started = None, False
        child.jobs.extend(batch)  # before it is sent: the supervisor may read its start at once
        try:
            child.conn.send_bytes(data)
        except OSError:
            for _ in batch:
                child.jobs.pop()
            self._pending.extendleft(reversed(batch))

    def _hard_limit(self, job: Job) -> float | None:
        return time_limits(self.app, job)[0]

    # -- Pool interface ------------------------------------------------------------------
    def start(self, emit: Emit) -> None:
        self._emit = emit
        with self._lock:
            for _ in range(self.concurrency):
                self._spawn()
        self._supervisor = threading.Thread(target=self._supervise, name="conveyor-prefork", daemon=True)
        self._supervisor.start()

    def submit(self, job: Job) -> None:
        with self._lock:
            self._pending.append(job)
        self._dispatch()

    def queued(self) -> int:
        return len(self._pending) + sum(len(c.jobs) - 1 for c in self._children if len(c.jobs) > 1)

    def shutdown(self) -> list[Job]:
        with self._lock:
            self._stopping = True
            pending = list(self._pending)
            self._pending.clear()
        self._wake()
        return pending

    def join(self, timeout: float | None = None) -> None:
        if self._supervisor is not None:
            self._supervisor.join(timeout)

    def terminate(self) -> None:
        with self._lock:
            self._stopping = True
            for child in self._children:
                with contextlib.suppress(OSError):
                    child.process.kill()  # type: ignore[attr-defined]
        self._wake()

    def resize(self, concurrency: int) -> None:
        with self._lock:
            self.concurrency = concurrency
            for _ in range(concurrency - len(self._active())):
                self._spawn()
            # Idle ones first; a busy one gets no more jobs and leaves once it has run those it holds.
            active = sorted(self._active(), key=lambda c: len(c.jobs))
            for child in active[: max(0, len(active) - concurrency)]:
                self._retire(child)
        self._wake()  # the supervisor watches the new children from its next turn
        self._dispatch()

    def _active(self) -> list[_Child]:
        """The children that take jobs (not those on their way out)."""
        return [c for c in self._children if not c.retiring]

    def _retire(self, child: _Child) -> None:
        child.retiring = True
        with contextlib.suppress(OSError):
            child.conn.send(None)

    def processes(self) -> list[int]:
        with self._lock:
            return [c.process.pid for c in self._children if c.process.pid]

    def run_here(self, job: Job) -> None:
        raise NotImplementedError(f"{type(self).__name__} runs jobs on threads or processes of its own")

    def kill(self, job_id: int, signum: int) -> None:
        with self._lock:
            for child in self._children:
                if child.jobs and child.jobs[0].id == job_id and child.process.pid:
                    with contextlib.suppress(OSError):
                        os.kill(child.process.pid, signum)

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"!")

    # -- supervisor ------------------------------------------------------------------------
    def _supervise(self) -> None:
        emit = self._emit
        assert emit is not None
        while True:
            with self._lock:
                if self._stopping and all(not c.jobs for c in self._children):
                    break
                deadlines = [c.deadline for c in self._children if c.deadline is not None]
            timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else 1.0
            exited = []
            for key, _ in self._selector.select(timeout):
                if key.data is None:
                    with contextlib.suppress(OSError):
                        self._wake_r.recv(4096)
                elif key.data[0] == "report":
                    self._receive_one(key.data[1], emit)
                else:
                    exited.append(key.data[1])
            for child in exited:  # after the reports: a child's last Finished is read before it is reaped
                if not child.process.is_alive():  # its pipe closes a moment before it can be waited for
                    self._reap(child, emit)
            self._enforce_time_limits(emit)
            self._dispatch()
        self._stop_children()

    def _receive_one(self, child: _Child, emit: Emit) -> bool:
        """One message of reports (the selector says again if more are waiting: one read, no
        extra poll); False when the pipe is closed."""
        try:
            reports = child.conn.recv()
        except (EOFError, OSError):
            return False  # the child died: its exit is reported by its sentinel
        for report in reports:
            self._report(child, report, emit)
        return True

    def _report(self, child: _Child, report: Any, emit: Emit) -> None:
        if isinstance(report, _Retiring):
            child.retiring = True
        elif isinstance(report, StateUpdate):
            emit(Updated(report))
        elif isinstance(report, Started):
            if child.jobs and child.jobs[0].id == report.job_id:
                child.started = True
                limit = self._hard_limit(child.jobs[0])
                child.deadline = time.monotonic() + limit if limit else None
                emit(report)
        elif isinstance(report, Finished):
            outcome = report.outcome
            if not (child.jobs and child.jobs[0].id == outcome.job_id):
                return  # killed for its time limit as it ended: its failure is reported already
            with self._lock:
                child.jobs.popleft()
                child.started, child.deadline = False, None
                runtime = self._runtime
                self._runtime = outcome.runtime if runtime is None else 0.8 * runtime + 0.2 * outcome.runtime
            emit(report)

    def _reap(self, child: _Child, emit: Emit) -> None:
        with contextlib.suppress(OSError):
            while child.conn.poll() and self._receive_one(child, emit):  # what it sent before it died
                pass
        child.process.join(0)
        for fileobj in (child.conn, child.process.sentinel):
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(fileobj)
        with self._lock:
            if child in self._children:
                self._children.remove(child)
            jobs, child.jobs = list(child.jobs), deque()
            if not self._stopping and len(self._active()) < self.concurrency:
                self._spawn()
        child.conn.close()
        if jobs and child.started:
            lost = jobs.pop(0)
            code = child.process.exitcode
            reason = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            emit(Lost(lost.id, WorkerLostError(f"worker process {child.process.pid} exited with {reason}")))
        if jobs:  # not begun: intact, they run elsewhere (first, in their order)
            with self._lock:
                self._pending.extendleft(reversed(jobs))
            self._dispatch()

    def _enforce_time_limits(self, emit: Emit) -> None:
        now = time.monotonic()
        with self._lock:
            overdue = [c for c in self._children if c.deadline is not None and c.deadline <= now]
        for child in overdue:
            with self._lock:  # as a Finished would: what it holds changes under the lock only
                if not (child.jobs and child.started):
                    continue
                job = child.jobs.popleft()
                # No more jobs for it; those it holds, not begun, go elsewhere when it is reaped.
                child.deadline, child.started, child.retiring = None, False, True
            limit = self._hard_limit(job)
            logger.error(
                "Hard time limit (%ss) exceeded for %s[%s]: killing process %s",
                limit, job.message.display_name, job.message.id, child.process.pid,
            )  # fmt: skip
            with contextlib.suppress(OSError):
                child.process.kill()  # type: ignore[attr-defined]
            error = TimeLimitExceeded(f"task {job.message.task} exceeded its time limit of {limit}s")
            emit(Finished(failure_outcome(self.app, job, error, float(limit or 0))))

    def _stop_children(self) -> None:
        for child in self._children:
            with contextlib.suppress(OSError):
                child.conn.send(None)
        for child in self._children:
            child.process.join(5)
            if child.process.is_alive():
                child.process.kill()  # type: ignore[attr-defined]
                child.process.join(1)
            child.conn.close()
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()
