"""Signatures: a task call as plain data, to send later or attach as a callback.

A `Signature` is a dict (`task`, `args`, `kwargs`, `options`, `subtask_type`,
`immutable`), exactly as Celery embeds it in messages, so callbacks travel in
the message body and cross the wire unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from conveyor.app import Conveyor
    from conveyor.result import AsyncResult


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

    def apply_async(
        self, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None, **options: Any
    ) -> AsyncResult[Any]:
        """Send the task; `args` are prepended unless the signature is immutable."""
        from conveyor.app import current_app

        app = self.app or current_app()
        sig = self.clone(args, kwargs, **options)
        task = app.tasks.get(sig.task)
        if task is not None:
            return task.apply_async(sig.args, sig.kwargs, **sig.options)
        return app.send_task(sig.task, sig.args, sig.kwargs, **sig.options)

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult[Any]:
        return self.apply_async(args, kwargs)

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


__all__ = ["Signature", "signature"]
