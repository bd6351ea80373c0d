"""Task: a registered function that can be called, sent, retried and traced.

`@app.task` turns a function into a `Task[P, R]`: calling it runs the function
here, `delay(*args)` sends it to a worker and returns an `AsyncResult[R]`. The
ParamSpec makes `add.delay("x")` a type error when `add` takes ints.
"""

from __future__ import annotations

import inspect
import random
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from conveyor.calls import CALL_OPTIONS, signature_dicts
from conveyor.canvas import Signature, chunks, xmap, xstarmap
from conveyor.exceptions import ExceptionInfo, MaxRetriesExceededError, Retry
from conveyor.result import AsyncResult

if TYPE_CHECKING:
    from conveyor.app import Conveyor
    from conveyor.backends.base import StateUpdate

P = ParamSpec("P")
R = TypeVar("R")


@dataclass
class Context:
    """`self.request`: what a running task knows about its call."""

    id: str | None = None
    task: str | None = None
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    retries: int = 0
    eta: datetime | None = None
    expires: datetime | None = None
    hostname: str | None = None
    delivery_info: dict[str, Any] = field(default_factory=dict)
    root_id: str | None = None
    parent_id: str | None = None
    group: str | None = None
    group_index: int | None = None
    shadow: str | None = None
    timelimit: tuple[float | None, float | None] = (None, None)
    origin: str | None = None
    reply_to: str | None = None
    is_eager: bool = False
    called_directly: bool = True
    ignore_result: bool = False
    headers: dict[str, Any] = field(default_factory=dict)
    children: list[str] = field(default_factory=list)
    """The ids of the tasks this run has sent so far (its result's `children`)."""
    callbacks: list[dict[str, Any]] | None = None
    errbacks: list[dict[str, Any]] | None = None
    chain: list[dict[str, Any]] | None = None
    chord: dict[str, Any] | None = None


class LazyRequest:
    """The running task's `Context`, built on first use: most tasks never look at `self.request`."""

    __slots__ = ("_build", "_context")

    def __init__(self, build: Callable[[], Context]) -> None:
        self._build = build
        self._context: Context | None = None

    def get(self) -> Context:
        if self._context is None:
            self._context = self._build()
        return self._context


#: The request of the task running in this context (set by `execution` around each run).
running_request: ContextVar[LazyRequest | None] = ContextVar("conveyor_request", default=None)


def current_request() -> Context | None:
    """The context of the task running in this thread, if any."""
    lazy = running_request.get()
    return lazy.get() if lazy is not None else None


def sent_children() -> list[str]:
    """The ids of the tasks the running task has sent (without building a request nobody read:
    sending a task reads it)."""
    lazy = running_request.get()
    return lazy._context.children if lazy is not None and lazy._context is not None else []


#: Set by the worker while a task runs: where `update_state` sends its updates.
state_sink: ContextVar[Callable[[StateUpdate], None] | None] = ContextVar("conveyor_state_sink", default=None)


#: The options `apply_async` understands (beyond args, kwargs, task_id, link, link_error, shadow).
class Task(Generic[P, R]):
    """A task type. Attributes are the task's options, with Celery's defaults."""

    name: str
    bind: bool = False
    max_retries: int | None = 3
    default_retry_delay: float = 180
    autoretry_for: tuple[type[BaseException], ...] = ()
    dont_autoretry_for: tuple[type[BaseException], ...] = ()
    retry_kwargs: dict[str, Any] = {}  # noqa: RUF012 - read-only class default
    retry_backoff: bool | float = False
    retry_backoff_max: float = 600
    retry_jitter: bool = True
    rate_limit: str | float | None = None
    ignore_result: bool | None = None
    store_errors_even_if_ignored: bool | None = None
    track_started: bool | None = None
    acks_late: bool | None = None
    reject_on_worker_lost: bool | None = None
    time_limit: float | None = None
    soft_time_limit: float | None = None
    serializer: str | None = None
    compression: str | None = None
    queue: str | None = None
    priority: int | None = None
    expires: float | datetime | None = None
    throws: tuple[type[BaseException], ...] = ()
    typing: bool = True
    #: Celery's marker for a base class that is not itself a task: accepted, changes nothing.
    abstract: bool = False

    def __init__(self, app: Conveyor, fun: Callable[..., R], name: str, **options: Any) -> None:
        for key, value in options.items():
            if not hasattr(type(self), key) or key.startswith("_"):
                from difflib import get_close_matches

                close = get_close_matches(key, [a for a in dir(Task) if not a.startswith("_")], 1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise TypeError(f"@app.task got an unknown option {key!r}{hint}")
            setattr(self, key, value)
        self.app = app
        self.fun = fun
        self.name = name
        self.__doc__ = fun.__doc__
        self.__wrapped__ = fun
        self.__module__ = fun.__module__
        #: The function's signature, which arguments are checked against (`typing`).
        self.call_signature = inspect.signature(fun)
        self._positional = _positional_range(self.call_signature, self.bind)
        #: An `async def` task: its worker awaits it (see `AsyncTask`).
        self.is_async = inspect.iscoroutinefunction(fun)
        #: A subclass that overrides a run hook (before_start, on_success, ...): the worker calls them.
        self.has_hooks = any(getattr(type(self), hook) is not getattr(Task, hook) for hook in HOOKS)

    # -- running here ----------------------------------------------------------------
    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the task in this process, as a plain function call (a worker calls this too, so
        a subclass's `__call__` wraps every run)."""
        return self.run(*args, **kwargs)

    def run(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """The task's body: its function (given the task first when bound)."""
        if self.bind:
            return self.fun(self, *args, **kwargs)
        return self.fun(*args, **kwargs)

    # -- hooks a subclass may override (Celery's names and arguments) ----------------
    def before_start(self, task_id: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Called in the worker before the task runs."""

    def on_success(self, retval: Any, task_id: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Called in the worker when the task returned."""

    def on_failure(
        self, exc: BaseException, task_id: str, args: tuple[Any, ...], kwargs: dict[str, Any], einfo: ExceptionInfo
    ) -> None:
        """Called in the worker when the task failed."""

    def on_retry(
        self, exc: BaseException, task_id: str, args: tuple[Any, ...], kwargs: dict[str, Any], einfo: ExceptionInfo
    ) -> None:
        """Called in the worker when the task is to be retried."""

    def after_return(
        self,
        status: str,
        retval: Any,
        task_id: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        einfo: ExceptionInfo | None,
    ) -> None:
        """Called in the worker after the task ended, whatever its state."""

    @property
    def request(self) -> Context:
        """The current call's context (empty when called directly)."""
        return current_request() or Context()

    def check_arguments(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
        """Raise TypeError, naming the task, when the arguments do not fit its signature."""
        positional = self._positional
        if positional is not None and not kwargs and positional[0] <= len(args) <= positional[1]:
            return  # the common call, `add.delay(1, 2)`: a count is the whole check
        bound_args = (None, *args) if self.bind else tuple(args)
        try:
            self.call_signature.bind(*bound_args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{self.name}{self.call_signature}: {exc}") from None

    # -- sending -----------------------------------------------------------------------
    def delay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        """Send the task with these arguments; a handle on its result."""
        return self.apply_async(args, kwargs)

    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        task_id: str | None = None,
        link: Signature | Sequence[Signature] | None = None,
        link_error: Signature | Sequence[Signature] | None = None,
        shadow: str | None = None,
        **options: Any,
    ) -> AsyncResult[R]:
        """Send the task with options: countdown, eta, expires, queue, priority, ...

        With `task_always_eager`, the task runs here instead (see `apply`).
        """
        args, kwargs = tuple(args or ()), dict(kwargs or {})
        unknown = set(options) - CALL_OPTIONS
        if unknown:
            from difflib import get_close_matches

            name = sorted(unknown)[0]
            close = get_close_matches(name, CALL_OPTIONS, 1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise TypeError(f"apply_async got an unknown option {name!r}{hint}")
        if self.typing:
            self.check_arguments(args, kwargs)
        if self.app.conf.task_always_eager:
            return self.apply(args, kwargs, task_id=task_id, link=link, link_error=link_error, shadow=shadow, **options)
        producer = self.app.producer
        call = producer.options(options, self)
        call.task_id, call.shadow = task_id, shadow
        if link is not None:
            call.link = signature_dicts(link)
        if link_error is not None:
            call.link_error = signature_dicts(link_error)
        return producer.send(self.name, args, kwargs, call)

    def apply(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        task_id: str | None = None,
        **options: Any,
    ) -> AsyncResult[R]:
        """Run the task in this process now, as a worker would; an EagerResult."""
        return self.app.run_eagerly(self, tuple(args or ()), dict(kwargs or {}), task_id, options)

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """A signature of this task with these arguments (a callback receives the parent's result first)."""
        return Signature(self.name, args, kwargs, app=self.app)

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        """An immutable signature: a callback gets exactly these arguments."""
        return Signature(self.name, args, kwargs, immutable=True, app=self.app)

    def signature(
        self, args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None, **options: Any
    ) -> Signature:
        return Signature(self.name, tuple(args or ()), dict(kwargs or {}), options=options, app=self.app)

    def map(self, it: Iterable[Any]) -> xmap:
        """One message that runs this task on each item in turn: `add_one.map([1, 2, 3])`."""
        return xmap(self.s(), it, app=self.app)

    def starmap(self, it: Iterable[Any]) -> xstarmap:
        """One message that runs this task on each argument tuple in turn: `add.starmap([(1, 2), (3, 4)])`."""
        return xstarmap(self.s(), it, app=self.app)

    def chunks(self, it: Iterable[Any], n: int) -> chunks:
        """Argument tuples split into messages of `n` calls each, sent as a group."""
        return chunks(self.s(), it, n, app=self.app)

    def AsyncResult(self, task_id: str) -> AsyncResult[R]:  # noqa: N802 - Celery's name
        return AsyncResult(task_id, self.app, task_name=self.name)

    # -- inside a running task -----------------------------------------------------------
    def retry(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        exc: BaseException | None = None,
        throw: bool = True,
        eta: datetime | None = None,
        countdown: float | None = None,
        max_retries: int | None = None,
        **options: Any,
    ) -> Retry:
        """End this attempt and send the task again, with the same id and retries + 1.

        Raises `Retry` (the worker records RETRY); once `max_retries` is used
        up, re-raises `exc` or raises `MaxRetriesExceededError`.
        """
        request = self.request
        if request.id is None or request.called_directly:
            # Called as a plain function (a test, a direct call): there is nothing to send again,
            # so it raises, as Celery does: the exception given, else Retry.
            raise exc or Retry("Task can be retried", None)
        limit = self.max_retries if max_retries is None else max_retries
        if limit is not None and request.retries >= limit:
            if exc is not None:
                raise exc
            raise MaxRetriesExceededError(
                f"Can't retry {self.name}[{request.id}] args:{request.args} kwargs:{request.kwargs}"
            )
        if eta is None and countdown is None:
            countdown = self.retry_delay(request.retries)
        send_options: dict[str, Any] = {
            "countdown": countdown, "eta": eta, "retries": request.retries + 1,
            "root_id": request.root_id, "parent_id": request.parent_id,
            "queue": request.delivery_info.get("routing_key"),
            "priority": request.delivery_info.get("priority"),
            "headers": dict(request.headers or {}) or None,  # custom headers, a deduplication hold
            **options,
        }  # fmt: skip
        if request.is_eager:
            # Eager retries run at once, in this process.
            send_options = {"retries": request.retries + 1}
        self.apply_async(
            request.args if args is None else args,
            request.kwargs if kwargs is None else kwargs,
            task_id=request.id,
            shadow=request.shadow,
            **{k: v for k, v in send_options.items() if v is not None},
        )
        signal = Retry(exc=exc, when=eta.isoformat() if eta else countdown)
        if throw:
            raise signal
        return signal

    def retry_delay(self, retries: int) -> float:
        """Seconds before the next attempt: `default_retry_delay`, or exponential backoff."""
        if not self.retry_backoff:
            return float(self.default_retry_delay)
        factor = 1.0 if self.retry_backoff is True else float(self.retry_backoff)
        delay = min(factor * (2**retries), float(self.retry_backoff_max))
        return random.uniform(0, delay) if self.retry_jitter else delay

    def update_state(self, task_id: str | None = None, state: str | None = None, meta: Any = None) -> None:
        """Record a state (e.g. 'PROGRESS' with meta {'done': 3, 'total': 10})."""
        task_id = task_id or self.request.id
        if task_id is None:
            raise RuntimeError(f"task {self.name}: update_state() needs a task id outside a worker")
        update = self.app.backend.make_update(
            task_id, state or "PENDING", meta, history={"worker": self.request.hostname}, reply_to=self.request.reply_to
        )
        sink = state_sink.get()
        if sink is not None:
            sink(update)  # through the worker, in order with STARTED and the result
        else:
            self.app.backend.write([update])

    def __repr__(self) -> str:
        return f"<@task: {self.name}>"


class AsyncTask(Task[P, R]):
    """A task defined with `async def`: `R` is what it returns once awaited.

    Workers run it natively: the asyncio pool (`-P asyncio`) interleaves many on
    one event loop; the other pools run it to completion on an event loop of the
    thread or process that took it. Calling it directly returns the coroutine,
    as calling the function does.
    """

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, R]:  # type: ignore[override]
        return super().__call__(*args, **kwargs)  # type: ignore[return-value]


#: The run hooks a Task subclass may override.
HOOKS = ("before_start", "on_success", "on_failure", "on_retry", "after_return")


def _positional_range(signature: inspect.Signature, bound: bool) -> tuple[int, float] | None:
    """How many positional arguments a call without keywords may pass: (least, most); None when
    a keyword-only parameter is required (then `Signature.bind` decides every call)."""
    least, most = 0, 0.0
    parameters = list(signature.parameters.values())
    if bound:  # the task itself goes first: the function must take it positionally
        if not parameters or parameters[0].kind not in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        ):
            return None
        parameters = parameters[1:]
    for parameter in parameters:
        if parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD):
            most += 1
            if parameter.default is parameter.empty:
                least = int(most)
        elif parameter.kind is parameter.VAR_POSITIONAL:
            most = float("inf")
        elif parameter.kind is parameter.KEYWORD_ONLY and parameter.default is parameter.empty:
            return None
    return least, most
