"""Running one task: the same steps in a pool thread, a prefork child, or eagerly.

`execute` sets up `self.request`, reports the start, calls the function
(retrying per `autoretry_for`), and returns an `Outcome`: the final state with
its result already encoded for the backend, so an unserializable result
becomes a FAILURE here, where it happened, and the worker's main loop only
writes bytes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import traceback
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from conveyor import dedup, messages, signals, states
from conveyor.backends.base import ResultBackend, StateUpdate, encode_exception
from conveyor.canvas import Signature
from conveyor.exceptions import ConveyorError, EncodeError, ExceptionInfo, Ignore, Reject, Retry
from conveyor.result import in_task
from conveyor.task import Context, LazyRequest, Task, current_request, running_request, sent_children, state_sink

if TYPE_CHECKING:
    from conveyor.app import Conveyor

logger = logging.getLogger("conveyor.worker")


# Job and Outcome are made per task: slots, not frozen (a frozen __init__ costs four times more).
@dataclass(slots=True)
class Job:
    """A task message accepted by a worker, on its way to a pool."""

    id: int
    message: messages.Message
    queue: str
    hostname: str
    redelivered: bool = False


@dataclass(slots=True)
class Outcome:
    """How one run of a task ended."""

    job_id: int
    task_id: str
    state: str
    runtime: float
    summary: str
    """What the log line shows: the result's repr, or the exception."""
    updates: tuple[StateUpdate, ...] = ()
    traceback: str | None = None
    expected: bool = False
    """True for exceptions listed in the task's `throws` (logged without traceback)."""
    meta: dict[str, Any] = field(default_factory=dict)


def short_repr(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def context_for(job: Job, *, eager: bool = False) -> Context:
    m = job.message
    return Context(
        id=m.id, task=m.task, args=m.args, kwargs=m.kwargs, retries=m.retries,
        eta=m.eta, expires=m.expires, hostname=job.hostname,
        delivery_info={
            "routing_key": job.queue, "priority": m.priority, "redelivered": job.redelivered, "exchange": "",
        },
        root_id=m.root_id, parent_id=m.parent_id, group=m.group, group_index=m.group_index,
        shadow=m.shadow, timelimit=(m.time_limit, m.soft_time_limit), origin=m.origin,
        reply_to=m.reply_to, is_eager=eager, called_directly=False, ignore_result=m.ignore_result,
        headers=m.headers, callbacks=m.callbacks, errbacks=m.errbacks, chain=m.chain, chord=m.chord,
    )  # fmt: skip


def _call(task: Task[Any, Any], message: messages.Message) -> Any:
    """Call the task function (an `async def` one to completion, on this thread's event loop)."""
    try:
        value = task(*message.args, **message.kwargs)
        return _thread_loop().run(value) if task.is_async else value
    except Retry:
        raise
    except Exception as exc:
        _autoretry(task, exc)
        raise


async def _call_async(task: Task[Any, Any], message: messages.Message) -> Any:
    """`_call` on an event loop: an `async def` task is awaited here, beside others."""
    try:
        value = task(*message.args, **message.kwargs)
        return await value if task.is_async else value
    except Retry:
        raise
    except Exception as exc:
        _autoretry(task, exc)
        raise


def _autoretry(task: Task[Any, Any], exc: Exception) -> None:
    """Turn an `autoretry_for` exception into `self.retry` (which raises Retry)."""
    if (
        task.autoretry_for
        and isinstance(exc, task.autoretry_for)
        and not (task.dont_autoretry_for and isinstance(exc, task.dont_autoretry_for))
    ):
        retry_kwargs = dict(task.retry_kwargs)
        if task.retry_backoff and "countdown" not in retry_kwargs:
            retry_kwargs["countdown"] = task.retry_delay(task.request.retries)
        task.retry(exc=exc, **retry_kwargs)


class _ThreadLoop:
    """A thread's event loop for `async def` tasks, closed when the thread ends (and its
    thread-local data with it)."""

    def __init__(self) -> None:
        self.runner = asyncio.Runner()

    def __del__(self) -> None:
        try:
            self.runner.close()
        except Exception:  # interpreter shutdown: nothing left to close cleanly
            pass


_loops = threading.local()


def _thread_loop() -> asyncio.Runner:
    """This thread's event loop for `async def` tasks, kept for its next one (a pool thread
    reuses it, so connections a task keeps on the loop stay usable)."""
    loop: _ThreadLoop | None = getattr(_loops, "loop", None)
    if loop is None:
        loop = _loops.loop = _ThreadLoop()
    return loop.runner


def extended_meta(job: Job) -> dict[str, Any]:
    m = job.message
    return {
        "name": m.task, "args": list(m.args), "kwargs": m.kwargs, "worker": job.hostname,
        "retries": m.retries, "queue": job.queue,
    }  # fmt: skip


_pid = os.getpid()


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)


def history_entry(job: Job, **extra: Any) -> dict[str, Any]:
    entry = {"worker": job.hostname, "retries": job.message.retries, "pid": _pid}
    if job.message.shadow:
        entry["shadow"] = job.message.shadow
    return {**entry, **extra}


def execute(
    app: Conveyor,
    job: Job,
    on_started: Callable[[int], None],
    *,
    eager: bool = False,
    backend: ResultBackend | None = None,
    on_update: Callable[[StateUpdate], None] | None = None,
    interruptible: AbstractContextManager[None] | None = None,
) -> Outcome:
    """Run a job's task and encode how it ended. Never raises for task errors.

    `on_started(pid)` is called as it starts; `on_update(update)` receives the
    task's own `update_state` calls; `interruptible` is entered around the task's
    own code alone (where a thread pool may raise its soft limit or revocation).
    """
    backend = backend or app.backend
    task = app.tasks[job.message.task]
    with _Running(task, job, eager, on_update):
        on_started(_pid)
        started = time.monotonic()
        try:
            with interruptible or nullcontext():
                if task.has_hooks:
                    task.before_start(job.message.id, job.message.args, job.message.kwargs)
                value = _call(task, job.message)
        except (Exception, SystemExit) as exc:  # the task's own failure, whatever it is (Retry too)
            outcome = _ended(app, backend, task, job, exc, started)
        else:
            outcome = _succeeded(app, backend, task, job, value, started)
        return _confirmed(app, backend, task, job, outcome, started)


async def execute_async(
    app: Conveyor,
    job: Job,
    on_started: Callable[[int], None],
    *,
    on_update: Callable[[StateUpdate], None] | None = None,
) -> Outcome:
    """`execute` on an event loop: an `async def` task is awaited, so others run meanwhile.

    Call it in a task of its own (`asyncio.create_task`): the request context
    it sets stays in that task's copy of the context.
    """
    backend = app.backend
    task = app.tasks[job.message.task]
    with _Running(task, job, False, on_update):
        on_started(_pid)
        started = time.monotonic()
        try:
            if task.has_hooks:
                task.before_start(job.message.id, job.message.args, job.message.kwargs)
            value = await _call_async(task, job.message)
        except (Exception, SystemExit) as exc:
            outcome = _ended(app, backend, task, job, exc, started)
        else:
            outcome = _succeeded(app, backend, task, job, value, started)
        return _confirmed(app, backend, task, job, outcome, started)


class _Running:
    """`self.request`, `update_state`'s sink and `in_task` for the length of one run;
    `task_prerun` once they are set."""

    __slots__ = ("_eager", "_job", "_on_update", "_task", "_tokens")

    def __init__(
        self, task: Task[Any, Any], job: Job, eager: bool, on_update: Callable[[StateUpdate], None] | None
    ) -> None:
        self._task, self._job, self._eager, self._on_update = task, job, eager, on_update

    def __enter__(self) -> None:
        job, eager = self._job, self._eager
        self._tokens = (
            running_request.set(LazyRequest(lambda: context_for(job, eager=eager))),
            in_task.set(True),
            state_sink.set(self._on_update),
        )
        if signals.task_prerun.receivers:
            m = job.message
            signals.task_prerun.send(self._task, task_id=m.id, task=self._task, args=m.args, kwargs=m.kwargs)

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, Exception) and signals.task_internal_error.receivers:
            # The task's own errors never get here: a step of Conveyor's after it failed (storing
            # the result, a hook's bookkeeping); the pool then reports the job lost.
            m = self._job.message
            signals.task_internal_error.send(
                self._task, task_id=m.id, args=m.args, kwargs=m.kwargs, request=current_request(), exception=exc,
                traceback=exc.__traceback__, einfo=ExceptionInfo(exc),
            )  # fmt: skip
        request_token, in_task_token, sink_token = self._tokens
        in_task.reset(in_task_token)
        running_request.reset(request_token)
        state_sink.reset(sink_token)


def _ended(
    app: Conveyor, backend: ResultBackend, task: Task[Any, Any], job: Job, exc: BaseException, started: float
) -> Outcome:
    """The outcome of a run that raised: RETRY for `self.retry`, IGNORED and REJECTED (nothing
    recorded; the worker acks, requeues or dead-letters), else FAILURE (errbacks run)."""
    if isinstance(exc, (Ignore, Reject)):
        state = states.IGNORED if isinstance(exc, Ignore) else states.REJECTED
        requeue = isinstance(exc, Reject) and exc.requeue
        runtime = time.monotonic() - started
        summary = repr(exc.reason) if isinstance(exc, Reject) else "ignored"
        return Outcome(job.id, job.message.id, state, runtime, summary, meta={"requeue": requeue})
    if isinstance(exc, Retry):
        return _signalled(task, job, *_finish(app, backend, task, job, states.RETRY, exc.exc or exc, started, exc=exc))
    _run_errbacks(app, job.message, exc)
    return _signalled(task, job, *_finish(app, backend, task, job, states.FAILURE, exc, started, exc=exc))


def _succeeded(
    app: Conveyor, backend: ResultBackend, task: Task[Any, Any], job: Job, value: Any, started: float
) -> Outcome:
    outcome, value = _finish(app, backend, task, job, states.SUCCESS, value, started)
    if outcome.state == states.SUCCESS:
        _run_callbacks(app, job.message.callbacks, (value,))
        if job.message.chain:
            _send_next_in_chain(app, job.message, value)
    return _signalled(task, job, outcome, value)


def _confirmed(
    app: Conveyor, backend: ResultBackend, task: Task[Any, Any], job: Job, outcome: Outcome, started: float
) -> Outcome:
    """The outcome once the broker has taken what the run published (subtasks, a chain's next
    step): a FAILURE if it refused them, as a publish raising inside the task would have made it."""
    try:
        app.confirm_published()
    except ConveyorError as exc:
        logger.error("Task %s[%s]: what it published was not taken: %s", job.message.task, job.message.id, exc)
        return _ended(app, backend, task, job, exc, started)
    return outcome


def _send_next_in_chain(app: Conveyor, message: messages.Message, value: Any) -> None:
    """A chain goes on from the worker that ran its step: the next step gets this result first."""
    rest = list(message.chain or ())
    step = Signature.from_dict(rest.pop(), app)  # kept last-first, as Celery does
    try:
        options: dict[str, Any] = {"parent_id": message.id, "root_id": message.root_id}
        if rest:
            options["chain"] = rest
        step.apply_async((value,), **options)
    except Exception:
        logger.exception("Could not send the next step of a chain, %s", step.task)


def _finish(
    app: Conveyor,
    backend: ResultBackend,
    task: Task[Any, Any],
    job: Job,
    state: str,
    value: Any,
    started: float,
    exc: BaseException | None = None,
) -> tuple[Outcome, Any]:
    """The run's outcome, and its value (an EncodeError when the result cannot be serialized)."""
    runtime = time.monotonic() - started
    tb = "".join(traceback.format_exception(exc)) if exc is not None and not isinstance(exc, Retry) else None
    if isinstance(exc, Retry) and exc.exc is not None:
        tb = "".join(traceback.format_exception(exc.exc))
    try:
        updates = result_updates(app, backend, task, job, state, value, runtime, tb)
    except Exception as encode_exc:  # the result cannot be serialized: that is the task's failure
        error = EncodeError(
            f"result of {job.message.task}[{job.message.id}] cannot be serialized"
            f" with {backend.serializer.name}: {encode_exc}"
        )
        tb = "".join(traceback.format_exception(error))
        updates = result_updates(app, backend, task, job, states.FAILURE, error, runtime, tb)
        return Outcome(job.id, job.message.id, states.FAILURE, runtime, repr(error), updates, tb), error
    summary = short_repr(value) if state == states.SUCCESS else repr(value)
    expected = exc is not None and bool(task.throws) and isinstance(exc, task.throws)
    return Outcome(job.id, job.message.id, state, runtime, summary, updates, tb, expected), value


def _signalled(task: Task[Any, Any], job: Job, outcome: Outcome, value: Any) -> Outcome:
    """The task's hooks, task_success, task_failure or task_retry, then task_postrun: after what
    the run sent (callbacks, a chain's next step), still inside the run's context."""
    m, state = job.message, outcome.state
    if state != states.RETRY:
        dedup.task_ended(task.app, m.headers)
    if task.has_hooks:
        _call_hooks(task, m, state, value)
    if state == states.SUCCESS and signals.task_success.receivers:
        signals.task_success.send(task, result=value)
    elif state == states.FAILURE and signals.task_failure.receivers:
        signals.task_failure.send(
            task, task_id=m.id, exception=value, args=m.args, kwargs=m.kwargs, traceback=value.__traceback__
        )
    elif state == states.RETRY and signals.task_retry.receivers:
        signals.task_retry.send(task, request=current_request(), reason=value)
    if signals.task_postrun.receivers:
        signals.task_postrun.send(
            task, task_id=m.id, task=task, args=m.args, kwargs=m.kwargs, retval=value, state=state
        )
    return outcome


def _call_hooks(task: Task[Any, Any], m: messages.Message, state: str, value: Any) -> None:
    """A Task subclass's on_success / on_failure / on_retry, then after_return (Celery's order);
    one that raises is logged, the task's outcome stands."""
    einfo = ExceptionInfo(value) if isinstance(value, BaseException) else None
    args, kwargs = m.args, m.kwargs
    try:
        if state == states.SUCCESS:
            task.on_success(value, m.id, args, kwargs)
        elif state == states.RETRY and einfo is not None:
            task.on_retry(value, m.id, args, kwargs, einfo)
        elif einfo is not None:
            task.on_failure(value, m.id, args, kwargs, einfo)
        task.after_return(state, value, m.id, args, kwargs, einfo)
    except Exception:
        logger.exception("A hook of task %s[%s] failed", m.task, m.id)


def result_updates(
    app: Conveyor,
    backend: ResultBackend,
    task: Task[Any, Any] | None,
    job: Job,
    state: str,
    value: Any,
    runtime: float,
    tb: str | None = None,
) -> tuple[StateUpdate, ...]:
    """The backend writes for a final state (none when results are ignored)."""
    conf = app.conf
    ignored = job.message.ignore_result or option(task, "ignore_result", conf.task_ignore_result)
    store_errors = option(task, "store_errors_even_if_ignored", conf.task_store_errors_even_if_ignored)
    if ignored and not (store_errors and state in states.EXCEPTION_STATES):
        return ()
    if isinstance(value, BaseException):
        value = encode_exception(value)
    extended = extended_meta(job) if app.conf.result_extended else None
    update = backend.make_update(
        job.message.id, state, value, traceback=tb,
        history=history_entry(job, runtime=round(runtime, 6), name=job.message.task),
        extended=extended, reply_to=job.message.reply_to, children=sent_children(),
    )  # fmt: skip
    return (update,)


def time_limits(app: Conveyor, job: Job) -> tuple[float | None, float | None]:
    """The (hard, soft) limits of a job: from the call, else the task, else the settings."""
    task = app.tasks.get(job.message.task)
    hard = job.message.time_limit or option(task, "time_limit", app.conf.task_time_limit)
    soft = job.message.soft_time_limit or option(task, "soft_time_limit", app.conf.task_soft_time_limit)
    return hard, soft


def option(task: Task[Any, Any] | None, name: str, default: Any) -> Any:
    """A task attribute, or the app-wide default when the task leaves it unset."""
    value = getattr(task, name, None) if task is not None else None
    return default if value is None else value


def failure_outcome(app: Conveyor, job: Job, error: BaseException, runtime: float = 0.0) -> Outcome:
    """A FAILURE decided outside the task: unknown name, refused content, time limit, lost process."""
    task = app.tasks.get(job.message.task)
    tb = "".join(traceback.format_exception(error))
    try:
        updates = result_updates(app, app.backend, task, job, states.FAILURE, error, runtime, tb)
    except Exception as exc:  # even the failure cannot be encoded (a result_serializer that fails): said, not stored
        logger.error("Task %s[%s] failed (%r) and the result backend cannot store it: %r",
                     job.message.task, job.message.id, error, exc)  # fmt: skip
        updates = ()
    return Outcome(job.id, job.message.id, states.FAILURE, runtime, repr(error), updates, tb)


def _run_errbacks(app: Conveyor, message: messages.Message, exc: BaseException) -> None:
    """Celery's two errback forms: `(request, exc, traceback)`, called here in the worker
    when the errback task is registered and takes three arguments; else it is sent with
    the failed task's id."""
    for data in message.errbacks or ():
        errback = app.tasks.get(data["task"])
        if errback is not None and _positional_arity(errback) >= 3:
            try:
                errback(current_request(), exc, exc.__traceback__)  # type: ignore[call-arg]
            except Exception:
                logger.exception("Errback %s failed", data["task"])
        else:
            _run_callbacks(app, [data], (message.id,))


def _positional_arity(task: Task[Any, Any]) -> int:
    import inspect

    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    count = sum(1 for p in task.call_signature.parameters.values() if p.kind in kinds)
    return count - 1 if task.bind else count


def _run_callbacks(app: Conveyor, callbacks: list[dict[str, Any]] | None, args: tuple[Any, ...]) -> None:
    for data in callbacks or ():
        try:
            Signature.from_dict(data, app).apply_async(args)
        except Exception:
            logger.exception("Could not send callback %s", data.get("task"))
