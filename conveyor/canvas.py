"""The canvas: task calls as data (`Signature`), and their compositions `chain`, `group`, `chord`.

A `Signature` is a dict (`task`, `args`, `kwargs`, `options`, `subtask_type`,
`immutable`), exactly as Celery embeds it in messages, so callbacks travel in
the message body and cross the wire unchanged.

- `chain(a, b, c)` (or `a | b | c`): the first is sent with the rest in its
  message (`chain`, last first, as in Celery); a worker that finishes one sends
  the next with the result prepended to its arguments. Every task id is fixed
  up front, so `apply_async()` returns the last one's result at once, its
  `parent` the one before.
- `group(...)`: every call built first and published in one broker call
  (`Broker.publish` of the whole batch); a `GroupResult` in order.
- `chord(header)(body)`: the header group, then `conveyor.chord_unlock`, a
  built-in task that checks the header's results (one backend read) and
  retries itself every `interval` seconds until they are all ready; then it
  sends the body with the list of results, or, if one failed, stores the body
  as FAILURE with ChordError. It works the same on every result backend that
  workers can read (not rpc://, whose results reach only their caller).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from itertools import pairwise
from typing import TYPE_CHECKING, Any

from conveyor import messages
from conveyor.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from conveyor.app import Conveyor
    from conveyor.result import AsyncResult, GroupResult

#: Seconds between a chord's checks of its header (the chord_unlock task's retry countdown).
CHORD_INTERVAL = 0.2


class Signature(dict[str, Any]):
    """A task name with arguments and call options."""

    def __init__(
        self,
        task: str,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        immutable: bool = False,
        *,
        app: Conveyor | None = None,
    ) -> None:
        super().__init__(
            task=getattr(task, "name", task),
            args=list(args),
            kwargs=dict(kwargs or {}),
            options=dict(options or {}),
            subtask_type=None,
            immutable=immutable,
        )
        self.app = app

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], app: Conveyor | None = None) -> Signature:
        return cls(
            data["task"], data.get("args") or (), data.get("kwargs"), data.get("options"),
            bool(data.get("immutable")), app=app,
        )  # fmt: skip

    @property
    def task(self) -> str:
        return str(self["task"])

    @property
    def args(self) -> tuple[Any, ...]:
        return tuple(self["args"])

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self["kwargs"])

    @property
    def options(self) -> dict[str, Any]:
        return dict(self["options"])

    @property
    def immutable(self) -> bool:
        return bool(self["immutable"])

    def set(self, immutable: bool | None = None, **options: Any) -> Signature:
        """Add call options (and change immutability); returns self."""
        if immutable is not None:
            self["immutable"] = immutable
        self["options"].update(options)
        return self

    def clone(self, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None, **options: Any) -> Signature:
        """A copy, with extra arguments prepended (unless immutable) and options merged."""
        new_args = self.args if self.immutable else (*args, *self.args)
        new_kwargs = self.kwargs if self.immutable else {**self.kwargs, **(kwargs or {})}
        return Signature(self.task, new_args, new_kwargs, {**self.options, **options}, self.immutable, app=self.app)

    @property
    def id(self) -> str | None:
        """The task id, once `freeze()` fixed it."""
        task_id = self["options"].get("task_id")
        return None if task_id is None else str(task_id)

    def freeze(self) -> str:
        """Fix the task id now (so results can be handed out before sending); returns it."""
        return str(self["options"].setdefault("task_id", messages.new_id()))

    def _app(self) -> Conveyor:
        from conveyor.app import current_app

        return self.app or current_app()

    def apply_async(
        self, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None, **options: Any
    ) -> AsyncResult[Any]:
        """Send the task; `args` are prepended unless the signature is immutable."""
        app = self._app()
        sig = self.clone(args, kwargs, **options)
        task = app.tasks.get(sig.task)
        if task is not None:
            return task.apply_async(sig.args, sig.kwargs, **sig.options)
        return app.send_task(sig.task, sig.args, sig.kwargs, **sig.options)

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult[Any]:
        return self.apply_async(args, kwargs)

    def __or__(self, other: Signature) -> chain:  # type: ignore[override]  # a signature, not a dict merge
        return chain(self, other)

    def __repr__(self) -> str:
        arguments = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"{self.task}({', '.join(arguments)}){'!' if self.immutable else ''}"


def signature(
    varies: str | Mapping[str, Any],
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    options: Mapping[str, Any] | None = None,
    immutable: bool = False,
    **extra_options: Any,
) -> Signature:
    """`signature('task.add', args=(2,), immutable=True)`, or from a signature dict."""
    if isinstance(varies, Mapping):
        return Signature.from_dict(varies)
    return Signature(varies, args, kwargs, {**(options or {}), **extra_options}, immutable)


class chain(Signature):  # noqa: N801 - Celery's name
    """Tasks run one after another, each getting the previous one's result first."""

    def __init__(self, *tasks: Signature | Iterable[Signature], app: Conveyor | None = None) -> None:
        flat: list[Signature] = []
        for task in tasks:
            if isinstance(task, chain):
                flat.extend(task.tasks)
            elif isinstance(task, Signature):
                flat.append(task)
            else:
                flat.extend(task)
        if not flat:
            raise ValueError("chain() needs at least one signature")
        _plain_tasks("chain", flat)
        super().__init__("conveyor.chain", app=app or flat[0].app)
        self["subtask_type"] = "chain"
        self.tasks: list[Signature] = flat

    def __or__(self, other: Signature) -> chain:  # type: ignore[override]
        return chain(self, other, app=self.app)

    def apply_async(
        self, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None, **options: Any
    ) -> AsyncResult[Any]:
        """Send the first task (with `args` prepended); the last one's result, linked by `parent`."""
        app = self._app()
        steps = [_bound(step.clone(), app) for step in self.tasks]
        results = []
        for step in steps:
            step.freeze()
            results.append(app.AsyncResult(str(step.id)))
        for previous, result in pairwise(results):
            result.parent = previous
        if app.conf.task_always_eager:
            value: Any = None
            for index, step in enumerate(steps):
                eager = step.apply_async(args if index == 0 else (value,), kwargs if index == 0 else None)
                value = eager.get()
            return eager
        rest = [dict(step) for step in reversed(steps[1:])]
        steps[0].apply_async(args, kwargs, **options, **({"chain": rest} if rest else {}))
        return results[-1]

    def __repr__(self) -> str:
        return " | ".join(repr(task) for task in self.tasks)


class group(Signature):  # noqa: N801 - Celery's name
    """Tasks run in parallel; their results come back together, in order."""

    def __init__(self, *tasks: Signature | Iterable[Signature], app: Conveyor | None = None) -> None:
        flat: list[Signature] = []
        for task in tasks:
            flat.extend([task] if isinstance(task, Signature) else task)
        _plain_tasks("group", flat)
        super().__init__("conveyor.group", app=app or (flat[0].app if flat else None))
        self["subtask_type"] = "group"
        self.tasks: list[Signature] = flat

    def apply_async(  # type: ignore[override]
        self, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None, **options: Any
    ) -> GroupResult:
        """Send every task in one broker call (`args` prepended to each); a GroupResult."""
        from conveyor.result import GroupResult

        app = self._app()
        group_id = str(options.pop("group_id", None) or messages.new_id())
        if app.conf.task_always_eager:
            eager = [task.apply_async(args, kwargs, **options) for task in self.tasks]
            return GroupResult(group_id, eager, app)
        outgoing, results = [], []
        for index, task in enumerate(self.tasks):
            sig = task.clone(args, kwargs, **options, group_id=group_id, group_index=index)
            if "deduplication_id" in sig.options:
                raise TypeError(f"deduplication applies to single calls, not to a group's members ({sig.task})")
            registered = app.tasks.get(sig.task)
            if registered is not None and registered.typing:
                registered.check_arguments(sig.args, sig.kwargs)
            message, result = app.prepare_message(sig.task, sig.args, sig.kwargs, task=registered, **sig.options)
            outgoing.append(message)
            results.append(result)
        if outgoing:
            app.publish_with_retry(outgoing, *app._retry_policy(options))
        return GroupResult(group_id, results, app)

    def __call__(self, *args: Any, **kwargs: Any) -> GroupResult:  # type: ignore[override]
        return self.apply_async(args, kwargs)

    def __repr__(self) -> str:
        return f"group({', '.join(repr(task) for task in self.tasks)})"


class chord(Signature):  # noqa: N801 - Celery's name
    """A group (the header) whose results, once all are ready, go to one more task (the body)."""

    def __init__(
        self,
        header: group | Iterable[Signature],
        body: Signature | None = None,
        *,
        interval: float = CHORD_INTERVAL,
        app: Conveyor | None = None,
    ) -> None:
        self.header = header if isinstance(header, group) else group(header, app=app)
        super().__init__("conveyor.chord", app=app or self.header.app or (body.app if body else None))
        self["subtask_type"] = "chord"
        self.body = body
        self.interval = interval

    def __call__(self, body: Signature | None = None, **options: Any) -> AsyncResult[Any]:  # type: ignore[override]
        """`chord(header)(body)`: send it; the body's result."""
        if body is not None:
            self.body = body
        return self.apply_async(**options)

    def apply_async(
        self, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None, **options: Any
    ) -> AsyncResult[Any]:
        if self.body is None:
            raise ValueError("chord() needs a body: chord(header)(body) or chord(header, body)")
        app = self._app()
        if not app.conf.task_always_eager and not app.backend.shared:
            raise ImproperlyConfigured(
                f"chord() needs a result backend that workers can read; {app.backend.display_url} sends "
                "each result to its caller only (use Redis, SQL or SQLite results for chords)"
            )
        body = _bound(self.body.clone(), app)
        body.freeze()
        header = self.header.apply_async(args, kwargs, **options)
        result = app.AsyncResult(str(body.id))
        result.parent = header
        if app.conf.task_always_eager:
            return body.apply_async((header.get(),))
        app.tasks["conveyor.chord_unlock"].apply_async(
            kwargs={"group_id": header.id, "result_ids": [r.id for r in header.results], "body": dict(body),
                    "interval": self.interval},
            countdown=self.interval,
        )  # fmt: skip
        return result


def _plain_tasks(kind: str, signatures: list[Signature]) -> None:
    nested = [s for s in signatures if isinstance(s, (chain, group, chord))]
    if nested:
        raise TypeError(f"{kind}() takes task signatures; a {type(nested[0]).__name__} inside it is not supported yet")


def _bound(sig: Signature, app: Conveyor) -> Signature:
    sig.app = app
    return sig


def register_builtins(app: Conveyor) -> None:
    """Tasks every app has, so any worker can run a chord's unlock step."""

    @app.task(name="conveyor.chord_unlock", bind=True, max_retries=None, ignore_result=True)
    def chord_unlock(self: Any, group_id: str, result_ids: list[str], body: dict[str, Any], interval: float) -> None:
        from conveyor import states
        from conveyor.exceptions import ChordError
        from conveyor.result import GroupResult

        header = GroupResult(group_id, [app.AsyncResult(task_id) for task_id in result_ids], app)
        if not header.ready():  # one backend read; the ready results are kept, so what follows reads nothing
            raise self.retry(countdown=interval)
        callback = Signature.from_dict(body, app)
        failed = next((r for r in header.results if not r.successful()), None)
        if failed is None:
            callback.apply_async((header.get(),))
            return
        error = ChordError(f"Dependency {failed.id} raised {failed.result!r}")
        app.backend.store(str(callback.id), states.FAILURE, error, history={"worker": self.request.hostname})
        for errback in callback.options.get("link_error") or ():
            Signature.from_dict(errback, app).apply_async((callback.id,))


__all__ = ["Signature", "chain", "chord", "group", "signature"]
