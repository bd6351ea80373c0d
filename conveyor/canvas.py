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
  (`Transport.publish` of the whole batch); a `GroupResult` in order.
- `chord(header)(body)`: the chord's record (header ids, body) goes into the
  broker's key-value store, then the header group, each part carrying the
  chord's id. The worker that stores a part's result counts it (compare-and-
  set); the part that completes the count sends the body with the list of
  results, or, if one failed, stores the body as FAILURE with ChordError.
  Whoever removes the record (compare-and-set again) is the one that sends, so
  it happens once. The built-in `conveyor.chord_unlock` task checks the header
  every few seconds as a fallback (a worker that died between storing a part's
  result and counting it), and is the only path for parts that no single task
  ends (a group or chord as a part). It works the same on every result
  backend that workers can read (not rpc://, whose results reach only their
  caller).

They nest as in Celery: a chain's step may be a group (each member gets the
previous result; a group followed by another step becomes a chord) or a
chord (what follows it follows its body); a group's member may be a chain or
a chord; a chord's header may hold chains and its body may be a chain. A
composite travels as a dict with its parts in `kwargs` (`tasks`, or `header`
and `body`), and `Signature.from_dict` rebuilds it wherever it lands: the
worker that finishes a step applies whatever comes next.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from itertools import pairwise
from typing import TYPE_CHECKING, Any

from conveyor import messages, states
from conveyor.current import current_app
from conveyor.exceptions import ChordError, DecodeError, ImproperlyConfigured
from conveyor.result import AsyncResult, GroupResult

if TYPE_CHECKING:
    from conveyor.app import Conveyor

#: Seconds between a chord's checks of its header by `conveyor.chord_unlock`: the fallback, when
#: no header task's end can say so (a header task that is itself a group or a chord).
CHORD_INTERVAL = 0.2
#: ... and its pace when every header task says when it ends: only a worker that died between
#: storing a header result and counting it leaves the chord to it.
CHORD_FALLBACK_INTERVAL = 2.0
#: The broker's key-value namespace of pending chords: group id -> {ids, body}; "<id>:done" -> count.
CHORDS = "chords"
#: The header that makes a task a chord's header part: its chord's group id.
CHORD_HEADER = "conveyor_chord"


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
        """The signature a dict describes: a plain call, or a chain, group or chord with its parts."""
        kind, kwargs = data.get("subtask_type"), data.get("kwargs") or {}
        composite: Signature
        if kind == "chain":
            composite = chain(*(Signature.from_dict(t, app) for t in kwargs["tasks"]), app=app)
        elif kind == "group":
            composite = group((Signature.from_dict(t, app) for t in kwargs["tasks"]), app=app)
        elif kind in ("xmap", "xstarmap"):
            kind_of = xmap if kind == "xmap" else xstarmap
            composite = kind_of(Signature.from_dict(kwargs["task"], app), kwargs["it"], app=app)
        elif kind == "chunks":
            composite = chunks(Signature.from_dict(kwargs["task"], app), kwargs["it"], int(kwargs["n"]), app=app)
        elif kind == "chord":
            header = [Signature.from_dict(t, app) for t in kwargs["header"]]
            body = Signature.from_dict(kwargs["body"], app)
            composite = chord(header, body, interval=float(kwargs.get("interval", CHORD_INTERVAL)), app=app)
        else:
            return cls(
                data["task"], data.get("args") or (), kwargs, data.get("options"),
                bool(data.get("immutable")), app=app,
            )  # fmt: skip
        composite["options"].update(data.get("options") or {})
        return composite

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

    def frozen_result(self, app: Conveyor) -> Any:
        """The result handle of a frozen signature, before it is sent."""
        return app.AsyncResult(self.freeze())

    def _app(self) -> Conveyor:
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

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the task here, now, with these arguments added (as calling the task does)."""
        sig = self.clone(args, kwargs)
        return self._app().tasks[sig.task](*sig.args, **sig.kwargs)

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


class _Composite(Signature):
    """A chain, group or chord: its parts travel in `kwargs`, as Celery embeds them."""

    def clone(self, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None, **options: Any) -> Signature:
        copy = Signature.from_dict(_plain(self), self.app)
        copy["options"].update(options)
        return copy


class chain(_Composite):  # noqa: N801 - Celery's name
    """Tasks run one after another, each getting the previous one's result first.

    A step may be a group (its tasks each get the previous result; followed by
    another step, the pair becomes a chord, as in Celery) or a chord.
    """

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
        super().__init__("conveyor.chain", kwargs={"tasks": _upgrade(flat, app)}, app=app or flat[0].app)
        self["subtask_type"] = "chain"

    @property
    def tasks(self) -> list[Signature]:
        return list(self["kwargs"]["tasks"])

    def __or__(self, other: Signature) -> chain:  # type: ignore[override]
        return chain(self, other, app=self.app)

    def freeze(self) -> str:
        return [step.freeze() for step in self.tasks][-1]

    def frozen_result(self, app: Conveyor) -> Any:
        results = [step.frozen_result(app) for step in self.tasks]
        for previous, result in pairwise(results):
            result.parent = previous
        return results[-1]

    def apply_async(  # type: ignore[override]
        self, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None, **options: Any
    ) -> Any:
        """Send the first step (with `args` prepended); the last step's result (a GroupResult when
        it is a group), linked to the ones before by `parent`."""
        app = self._app()
        following = [Signature.from_dict(s, app) for s in reversed(options.pop("chain", None) or ())]
        steps = _upgrade([_bound(step.clone(), app) for step in self.tasks] + following, app)
        result = chain(*steps, app=app).frozen_result(app)
        if app.conf.task_always_eager:
            value: Any = None
            for index, step in enumerate(steps):
                eager = step.apply_async(args if index == 0 else (value,), kwargs if index == 0 else None)
                value = eager.get()
            return eager
        rest = [dict(step) for step in reversed(steps[1:])]
        steps[0].apply_async(args, kwargs, **options, **({"chain": rest} if rest else {}))
        return result

    def __repr__(self) -> str:
        return " | ".join(repr(task) for task in self.tasks)

    def __call__(self, *args: Any, **kwargs: Any) -> AsyncResult[Any]:  # type: ignore[override]
        """Send the chain (as Celery's `chain(...)()` does): the last step's result."""
        result: AsyncResult[Any] = self.apply_async(args, kwargs)
        return result


class group(_Composite):  # noqa: N801 - Celery's name
    """Tasks run in parallel; their results come back together, in order. A member may be a chain
    or a chord; a group inside a group adds its members."""

    def __init__(self, *tasks: Signature | Iterable[Signature], app: Conveyor | None = None) -> None:
        flat: list[Signature] = []
        for task in tasks:
            for member in [task] if isinstance(task, Signature) else task:
                flat.extend(member.tasks if isinstance(member, group) else [member])
        super().__init__("conveyor.group", kwargs={"tasks": flat}, app=app or (flat[0].app if flat else None))
        self["subtask_type"] = "group"

    @property
    def tasks(self) -> list[Signature]:
        return list(self["kwargs"]["tasks"])

    def freeze(self) -> str:
        for task in self.tasks:
            task.freeze()
        return str(self["options"].setdefault("group_id", messages.new_id()))

    def frozen_result(self, app: Conveyor) -> GroupResult:

        group_id = self.freeze()
        return GroupResult(group_id, [task.frozen_result(app) for task in self.tasks], app)

    def apply_async(  # type: ignore[override]
        self, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None, **options: Any
    ) -> GroupResult:
        """Send every task (plain calls in one broker call; `args` prepended to each); a GroupResult."""

        app = self._app()
        following = list(options.pop("chain", None) or ())
        if following:  # a group followed by more steps: the next one is its chord's body
            body = Signature.from_dict(following.pop(), app)
            more = {"chain": following} if following else {}
            return chord(self.tasks, body, app=app).apply_async(args, kwargs, **options, **more)  # type: ignore[return-value]
        group_id = str(options.pop("group_id", None) or self["options"].get("group_id") or messages.new_id())
        if app.conf.task_always_eager:
            eager = [task.apply_async(args, kwargs, **options) for task in self.tasks]
            return GroupResult(group_id, eager, app)
        outgoing, results = [], []
        for index, task in enumerate(self.tasks):
            if isinstance(task, _Composite):
                results.append(task.apply_async(args, kwargs, **options))
                continue
            sig = task.clone(args, kwargs, **options, group_id=group_id, group_index=index)
            if "deduplication_id" in sig.options:
                raise TypeError(f"deduplication applies to single calls, not to a group's members ({sig.task})")
            registered = app.tasks.get(sig.task)
            if registered is not None and registered.typing:
                registered.check_arguments(sig.args, sig.kwargs)
            producer = app.producer
            message, result = producer.prepare(
                sig.task, sig.args, sig.kwargs, producer.options(sig.options, registered)
            )
            outgoing.append(message)
            results.append(result)
        if outgoing:
            app.producer.publish(outgoing, app.producer.options(options))
        return GroupResult(group_id, results, app)

    def __call__(self, *args: Any, **kwargs: Any) -> GroupResult:  # type: ignore[override]
        return self.apply_async(args, kwargs)

    def __repr__(self) -> str:
        return f"group({', '.join(repr(task) for task in self.tasks)})"


class chord(_Composite):  # noqa: N801 - Celery's name
    """A group (the header) whose results, once all are ready, go to one more task (the body)."""

    def __init__(
        self,
        header: group | Iterable[Signature],
        body: Signature | None = None,
        *,
        interval: float = CHORD_INTERVAL,
        app: Conveyor | None = None,
    ) -> None:
        tasks = header.tasks if isinstance(header, group) else group(header, app=app).tasks
        first = tasks[0].app if tasks else None
        super().__init__(
            "conveyor.chord", kwargs={"header": tasks, "body": body, "interval": interval},
            app=app or first or (body.app if body else None),
        )  # fmt: skip
        self["subtask_type"] = "chord"

    @property
    def header(self) -> group:
        header = group(self["kwargs"]["header"], app=self.app)
        if "group_id" in self["options"]:
            header["options"]["group_id"] = self["options"]["group_id"]
        return header

    @property
    def body(self) -> Signature | None:
        body: Signature | None = self["kwargs"]["body"]
        return body

    @property
    def interval(self) -> float:
        return float(self["kwargs"]["interval"])

    def freeze(self) -> str:
        if self.body is None:
            raise ValueError("chord() needs a body: chord(header)(body) or chord(header, body)")
        for task in self["kwargs"]["header"]:
            task.freeze()
        self["options"].setdefault("group_id", messages.new_id())
        return self.body.freeze()

    def frozen_result(self, app: Conveyor) -> Any:
        self.freeze()
        assert self.body is not None
        result = self.body.frozen_result(app)
        result.parent = self.header.frozen_result(app)
        return result

    def __call__(self, body: Signature | None = None, **options: Any) -> AsyncResult[Any]:  # type: ignore[override]
        """`chord(header)(body)`: send it; the body's result."""
        if body is not None:
            self["kwargs"]["body"] = body
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
        following = [Signature.from_dict(s, app) for s in reversed(options.pop("chain", None) or ())]
        if following:  # a chord inside a chain: what follows it follows its body
            body = chain(body, *following, app=app)
        result = body.frozen_result(app)
        if app.conf.task_always_eager:
            header = self.header.apply_async(args, kwargs, **options)
            result.parent = header
            return body.apply_async((header.get(),))  # type: ignore[no-any-return]
        # The chord's record goes first: the last header task to end sends the body from it.
        parts = self.header
        group_id = parts.freeze()
        ids = [task.frozen_result(app).id for task in parts.tasks]
        app.state.kv_put(CHORDS, group_id, app.backend.encode({"ids": ids, "body": _plain(body)}))
        every_part_counts = all([_mark(task, [group_id, len(ids)]) for task in parts.tasks])
        header = parts.apply_async(args, kwargs, **options)
        result.parent = header
        interval = max(self.interval, CHORD_FALLBACK_INTERVAL) if every_part_counts else self.interval
        app.tasks["conveyor.chord_unlock"].apply_async(
            kwargs={"group_id": group_id, "interval": interval}, countdown=interval
        )
        return result  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        return f"chord([{', '.join(repr(task) for task in self.header.tasks)}], {self.body!r})"


class xmap(Signature):  # noqa: N801 - Celery's name
    """One task message that runs `task` on each item of `it` in turn, in one worker: a list of results."""

    builtin, kind = "conveyor.map", "xmap"

    def __init__(self, task: Signature, it: Iterable[Any], app: Conveyor | None = None, **options: Any) -> None:
        task = task if isinstance(task, Signature) else Signature(task)
        super().__init__(self.builtin, (), {"task": _plain(task), "it": list(it)}, options, immutable=True,
                         app=app or task.app)  # fmt: skip
        self["subtask_type"] = self.kind

    def __repr__(self) -> str:
        return f"[{Signature.from_dict(self['kwargs']['task'])!r}(x) for x in {self['kwargs']['it']!r}]"


class xstarmap(xmap):  # noqa: N801 - Celery's name
    """As `xmap`, each item being the task's arguments: `task(*item)`."""

    builtin, kind = "conveyor.starmap", "xstarmap"

    def __repr__(self) -> str:
        return f"[{Signature.from_dict(self['kwargs']['task'])!r}(*x) for x in {self['kwargs']['it']!r}]"


class chunks(Signature):  # noqa: N801 - Celery's name
    """`it` (argument tuples) split into parts of `n`, each part one `xstarmap` message: a group of them."""

    def __init__(self, task: Signature, it: Iterable[Any], n: int, app: Conveyor | None = None, **options: Any) -> None:
        if n < 1:
            raise ValueError(f"chunks need a size of at least 1, not {n}")
        task = task if isinstance(task, Signature) else Signature(task)
        super().__init__("conveyor.chunks", (), {"task": _plain(task), "it": list(it), "n": n}, options,
                         immutable=True, app=app or task.app)  # fmt: skip
        self["subtask_type"] = "chunks"

    def group(self) -> group:
        """The group of `xstarmap` messages, one per part."""
        task, items, n = (
            Signature.from_dict(self["kwargs"]["task"], self.app),
            self["kwargs"]["it"],
            self["kwargs"]["n"],
        )
        return group([xstarmap(task, items[i : i + n], app=self.app) for i in range(0, len(items), n)], app=self.app)

    def apply_async(  # type: ignore[override]
        self, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None, **options: Any
    ) -> GroupResult:
        """Send the parts as a group: a GroupResult whose results are lists, one per part."""
        return self.group().apply_async(args, kwargs, **{**self.options, **options})

    def __call__(self, *args: Any, **kwargs: Any) -> GroupResult:  # type: ignore[override]
        return self.apply_async(args, kwargs)


def _mark(task: Signature, chord_id: list[Any]) -> bool:
    """Make the task that ends a header part carry its chord's [group id, size] (a chain's last
    step); False when no one task ends it (a group or chord as a part: the unlock task watches those)."""
    if isinstance(task, chain):
        return _mark(task.tasks[-1], chord_id)
    if isinstance(task, _Composite):
        return False
    task["options"]["headers"] = {**(task["options"].get("headers") or {}), CHORD_HEADER: chord_id}
    return True


def chord_part(headers: Mapping[str, Any]) -> tuple[str, int] | None:
    """The chord a header task belongs to, as its message says: (chord id, header size)."""
    value = headers.get(CHORD_HEADER)
    if value is None:
        return None
    if (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
        and value[1] > 0
    ):
        return value[0], value[1]
    raise DecodeError(f"header {CHORD_HEADER!r} must be [chord id, header size], not {value!r:.80}")


def chord_part_done(app: Conveyor, group_id: str, size: int) -> None:
    """A header task of chord `group_id` (of `size` parts) has ended and its result is stored:
    count it; the count reaching `size` completes the chord (a task counted twice, run again
    after a crash, makes the count early, never late: completing checks every result). One
    small key per part: the record, with every id and the body, is read only to complete."""
    counter = f"{group_id}:done"
    while True:
        current = app.state.kv_get(CHORDS, counter)
        count = int(current or 0) + 1
        if app.state.kv_swap(CHORDS, counter, current, str(count).encode()):
            break
    if count >= size:
        complete_chord(app, group_id, hostname=None)


def complete_chord(app: Conveyor, group_id: str, hostname: str | None) -> bool:
    """Once every header result is ready, send the body with them (or store it as FAILURE with
    ChordError); False while one is not. Of the workers that may try at once (the last header
    tasks, the unlock task), exactly one sends it: the one whose compare-and-set removes the record."""

    raw = app.state.kv_get(CHORDS, group_id)
    if raw is None:  # another worker completed it (a count made since, by a task run again, goes too)
        app.state.kv_put(CHORDS, f"{group_id}:done", None)
        return True
    record = app.backend.decode(raw)
    header = GroupResult(group_id, [app.AsyncResult(task_id) for task_id in record["ids"]], app)
    if not header.ready():  # one backend read; ready results are kept, so what follows reads nothing
        return False
    if not app.state.kv_swap(CHORDS, group_id, raw, None):
        return True
    app.state.kv_put(CHORDS, f"{group_id}:done", None)
    callback = Signature.from_dict(record["body"], app)
    failed = next((r for r in header.results if not r.successful()), None)
    if failed is None:
        callback.apply_async((header.get(),))
    else:
        error = ChordError(f"Dependency {failed.id} raised {failed.result!r}")
        app.backend.store(str(callback.id), states.FAILURE, error, history={"worker": hostname})
        for errback in callback.options.get("link_error") or ():
            Signature.from_dict(errback, app).apply_async((callback.id,))
    app.confirm_published()  # the record is gone: what it turned into must have landed
    return True


def _plain(value: Any) -> Any:
    """A deep copy of a signature as plain dicts and lists (what travels in a message)."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def _upgrade(steps: list[Signature], app: Conveyor | None) -> list[Signature]:
    """A chain's steps, each group followed by a step joined with it into a chord (as Celery does)."""
    upgraded: list[Signature] = []
    for step in steps:
        if upgraded and isinstance(upgraded[-1], group):
            upgraded[-1] = chord(upgraded[-1], step, app=app)
        else:
            upgraded.append(step)
    return upgraded


def _bound(sig: Signature, app: Conveyor) -> Signature:
    sig.app = app
    return sig


def register_builtins(app: Conveyor) -> None:
    """Tasks every app has, so any worker can run a chord's unlock step."""

    @app.task(name="conveyor.map")
    def run_map(task: dict[str, Any], it: list[Any]) -> list[Any]:
        function = app.tasks[Signature.from_dict(task, app).task]  # run here, one after another, as Celery's
        return [function(item) for item in it]

    @app.task(name="conveyor.starmap")
    def run_starmap(task: dict[str, Any], it: list[Any]) -> list[Any]:
        function = app.tasks[Signature.from_dict(task, app).task]
        return [function(*item) for item in it]

    @app.task(name="conveyor.chord_unlock", bind=True, max_retries=None, ignore_result=True)
    def chord_unlock(self: Any, group_id: str, interval: float) -> None:
        if not complete_chord(app, group_id, self.request.hostname):
            raise self.retry(countdown=interval)


__all__ = ["Signature", "chain", "chord", "chunks", "group", "signature", "xmap", "xstarmap"]
