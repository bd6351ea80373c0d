"""`shared_task`: tasks defined without an app (library code, Django apps), bound to every app.

A shared task is registered with every app that exists and every app created
later; calling it goes to the current app's copy (`conveyor.current_app`),
so code that imports no app still sends to the one the process configured.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, overload

from conveyor.current import current_app

if TYPE_CHECKING:
    from conveyor.app import Conveyor
    from conveyor.result import AsyncResult
    from conveyor.task import Task

P = ParamSpec("P")
R = TypeVar("R")

_registrations: list[Callable[[Conveyor], object]] = []
_apps: weakref.WeakSet[Conveyor] = weakref.WeakSet()


def bind_shared_tasks(app: Conveyor) -> None:
    """Register every shared task with `app` (each new app calls this), and later ones too."""
    _apps.add(app)
    for register in _registrations:
        register(app)


class SharedTask(Generic[P, R]):
    """A task of whichever app is current when it is used."""

    def __init__(self, function: Callable[P, R], options: dict[str, Any]) -> None:
        self.function = function
        self.options = options

    @property
    def task(self) -> Task[P, R]:
        """This task in the current app."""
        app = current_app()
        name = self.options.get("name") or app.task_name(self.function)
        task = app.tasks.get(name)
        if task is None:
            task = app.task(**self.options)(self.function)
        return task  # type: ignore[return-value]

    @property
    def name(self) -> str:
        return self.task.name

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.task(*args, **kwargs)

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        return self.task.delay(*args, **kwargs)

    def apply_async(self, *args: Any, **kwargs: Any) -> AsyncResult[R]:
        return self.task.apply_async(*args, **kwargs)

    def __getattr__(self, attribute: str) -> Any:
        # Everything else a Task has (s, si, signature, apply, retry, AsyncResult, ...), from the current app's.
        return getattr(self.task, attribute)

    def __repr__(self) -> str:
        return f"<shared task {self.options.get('name') or self.function.__qualname__}>"


@overload
def shared_task(fun: Callable[P, R], /) -> SharedTask[P, R]: ...


@overload
def shared_task(**options: Any) -> Callable[[Callable[..., Any]], SharedTask[..., Any]]: ...


def shared_task(fun: Callable[..., Any] | None = None, /, **options: Any) -> Any:
    """Celery's `@shared_task` / `@shared_task(bind=True, ...)`: a task for every app, with `app.task`'s options."""

    def decorate(function: Callable[..., Any]) -> SharedTask[..., Any]:
        def register(app: Conveyor) -> object:
            return app.task(**options)(function)

        _registrations.append(register)
        for app in list(_apps):
            register(app)
        return SharedTask(function, options)

    return decorate(fun) if fun is not None else decorate
