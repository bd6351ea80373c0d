"""The application: settings, the task registry, and the wiring to broker and backend.

`Conveyor` (also exported as `Celery`) is what `conveyor -A module` finds. It
creates its broker and result backend on first use, from `app.conf`, so a
module can build the app, load its configuration and define tasks in any
order before anything connects.
"""

from __future__ import annotations

import importlib
import inspect
import os
import threading
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, Concatenate, Literal, ParamSpec, Protocol, TypeVar, overload

from conveyor import signals
from conveyor.backends import ResultBackend, backend_from_url
from conveyor.brokers import AMQP_SCHEMES, Broker, StateStore, Transport, open_broker
from conveyor.canvas import Signature, register_builtins
from conveyor.config import Settings, settings_from_object
from conveyor.control import Control
from conveyor.current import set_current_app, set_default_app_factory
from conveyor.eager import run_eagerly
from conveyor.exceptions import ImproperlyConfigured
from conveyor.producer import Producer
from conveyor.result import AsyncResult
from conveyor.routing import Router
from conveyor.shared import bind_shared_tasks
from conveyor.signals import Signal
from conveyor.signing import Signing
from conveyor.signing import from_settings as signing_from_settings
from conveyor.sqlitedb import DEFAULT_URL
from conveyor.task import AsyncTask, Task

P = ParamSpec("P")
R = TypeVar("R")


class _TaskDecorator(Protocol):
    """`@app.task(...)`: an `async def` function becomes an AsyncTask, any other a Task."""

    @overload
    def __call__(self, fun: Callable[P, Coroutine[Any, Any, R]], /) -> AsyncTask[P, R]: ...

    @overload
    def __call__(self, fun: Callable[P, R], /) -> Task[P, R]: ...


class _BoundTaskDecorator(Protocol):
    """`@app.task(bind=True, ...)`: the function's first argument is the task itself."""

    @overload
    def __call__(self, fun: Callable[Concatenate[Any, P], Coroutine[Any, Any, R]], /) -> AsyncTask[P, R]: ...

    @overload
    def __call__(self, fun: Callable[Concatenate[Any, P], R], /) -> Task[P, R]: ...


class Conveyor:
    """A Conveyor application: `app = Conveyor('task')` or, as in Celery, `Celery('task')`."""

    def __init__(
        self,
        main: str | None = None,
        *,
        broker: str | None = None,
        backend: str | None = None,
        include: Sequence[str] | None = None,
        config_source: Any = None,
        task_cls: type[Task[Any, Any]] | str | None = None,
        set_as_current: bool = True,
        **settings: Any,
    ) -> None:
        self.main = main
        #: The class `@app.task` makes tasks of (`base=` chooses another for one task).
        self.Task: type[Task[Any, Any]] = _task_class(task_cls) if task_cls is not None else Task
        self.conf = Settings()
        self.tasks: dict[str, Task[Any, Any]] = {}
        self._broker: Broker | None = None
        self._producer: Producer | None = None
        self._backend: ResultBackend | None = None
        self._router: tuple[tuple[int, ...], Router] | None = None
        self._signing: tuple[tuple[Any, ...], Signing | None] | None = None
        self._lock = threading.Lock()
        self._autodiscover: list[tuple[Sequence[str] | Callable[[], Sequence[str]] | None, str]] = []
        #: Celery's app signals: sent once when a worker or beat finalizes the app (`finalize`),
        #: and in each prefork child after the fork. Receivers get `sender=app`.
        self.on_after_configure = Signal("on_after_configure")
        self.on_after_finalize = Signal("on_after_finalize")
        self.on_after_fork = Signal("on_after_fork")
        self.finalized = False
        if config_source is not None:
            self.config_from_object(config_source)
        initial: dict[str, Any] = dict(settings)
        if broker is not None:
            initial["broker_url"] = broker
        if backend is not None:
            initial["result_backend"] = backend
        if include is not None:
            initial["include"] = include
        self.conf.update(initial)
        register_builtins(self)
        bind_shared_tasks(self)
        if set_as_current:  # Celery's rule: the newest app is current_app, unless it says otherwise
            set_current_app(self)

    # -- configuration -------------------------------------------------------------------
    def config_from_object(self, obj: Any, namespace: str | None = None) -> None:
        """Load settings from a class, an object, or a module given by dotted name.

        `'package.module'` or `'package.module:attribute'` are imported. Unknown
        setting names and bad values raise `ImproperlyConfigured` naming them.
        """
        if isinstance(obj, str):
            try:
                obj = import_object(obj)
            except ImportError as exc:
                raise ImproperlyConfigured(f"cannot import configuration module {obj!r}: {exc}") from exc
        self.conf.update(settings_from_object(obj, namespace))

    def import_modules(self) -> None:
        """Import `imports` and `include` modules, where tasks are defined, and the modules
        `autodiscover_tasks` asked for."""
        for name in (*self.conf.imports, *self.conf.include):
            importlib.import_module(name)
        for packages, related_name in self._autodiscover:
            discover_tasks(packages, related_name)
        signals.import_modules.send(self)

    def finalize(self) -> None:
        """Get the app ready to run tasks (a worker and beat call this once): import the task
        modules, then send `on_after_configure` and `on_after_finalize`, whose receivers may add
        periodic tasks."""
        with self._lock:
            if self.finalized:
                return
            self.finalized = True
        self.import_modules()
        self.on_after_configure.send(self, source=self.conf)
        self.on_after_finalize.send(self)

    def add_periodic_task(
        self,
        schedule: Any,
        sig: Signature,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        name: str | None = None,
        **options: Any,
    ) -> str:
        """Add a `beat_schedule` entry that sends `sig` on `schedule` (seconds, a timedelta, crontab, solar);
        its name (by default the signature's repr)."""
        entry_name = name or repr(sig)
        entry = {
            "task": sig.task,
            "schedule": schedule,
            "args": tuple(args or sig.args),
            "kwargs": dict(kwargs or sig.kwargs),
            "options": {**sig.options, **options},
        }
        self.conf.beat_schedule = {**self.conf.beat_schedule, entry_name: entry}
        return entry_name

    def autodiscover_tasks(
        self,
        packages: Sequence[str] | Callable[[], Sequence[str]] | None = None,
        related_name: str = "tasks",
        force: bool = False,
    ) -> None:
        """Import `<package>.<related_name>` of each package when the worker starts (now with `force`).

        `packages` is a list, a callable returning one (`lambda: settings.INSTALLED_APPS`), or None:
        every installed Django app, once Django is set up. A package without that module is skipped.
        """
        if force:
            discover_tasks(packages, related_name)
        else:
            self._autodiscover.append((packages, related_name))

    # -- tasks -------------------------------------------------------------------------------
    @overload
    def task(self, fun: Callable[P, Coroutine[Any, Any, R]], /) -> AsyncTask[P, R]: ...

    @overload
    def task(self, fun: Callable[P, R], /) -> Task[P, R]: ...

    @overload
    def task(self, *, bind: Literal[True], name: str | None = None, **options: Any) -> _BoundTaskDecorator: ...

    @overload
    def task(self, *, bind: Literal[False] = False, name: str | None = None, **options: Any) -> _TaskDecorator: ...

    def task(  # type: ignore[misc]  # mypy cannot match ParamSpec overloads to **options
        self, fun: Callable[..., Any] | None = None, /, *, bind: bool = False, name: str | None = None, **options: Any
    ) -> Any:
        """Register a function as a task: `@app.task` or `@app.task(name=..., bind=True, ...)`.

        The name defaults to `<module>.<function>`. An `async def` function
        becomes an `AsyncTask`, which workers await.
        """

        base: type[Task[Any, Any]] = options.pop("base", None) or self.Task

        def register(function: Callable[..., Any]) -> Task[Any, Any]:
            kind = AsyncTask if base is Task and inspect.iscoroutinefunction(function) else base
            task: Task[Any, Any] = kind(self, function, name or self.task_name(function), bind=bind, **options)
            self.tasks[task.name] = task
            return task

        return register(fun) if fun is not None else register

    def task_name(self, function: Callable[..., Any]) -> str:
        module = function.__module__
        if module == "__main__" and self.main:
            module = self.main
        return f"{module}.{function.__name__}"

    def annotate_tasks(self) -> None:
        """Apply `task_annotations` (by exact name, then '*') to registered tasks."""
        annotations = self.conf.task_annotations
        if not annotations:
            return
        for mapping in annotations if isinstance(annotations, (list, tuple)) else [annotations]:
            for task in self.tasks.values():
                for key in ("*", task.name):
                    for attribute, value in (mapping.get(key) or {}).items():
                        setattr(task, attribute, value)

    # -- wiring --------------------------------------------------------------------------------
    @property
    def broker(self) -> Transport:
        """The broker's transport (the queues), opened from `broker_url` on first use."""
        broker = self._broker
        return (broker if broker is not None else self._opened_broker()).transport

    @property
    def state(self) -> StateStore:
        """The state store workers share besides messages (revocations, rate limits, beat's
        state, the worker registry), opened with the transport."""
        return self._opened_broker().state

    def _opened_broker(self) -> Broker:
        if self._broker is None:
            with self._lock:
                if self._broker is None:
                    self._broker = self.new_broker()
        return self._broker

    def new_broker(self) -> Broker:
        """A transport and state store with connections of their own, for a thread that blocks
        in `fetch` beside the worker's fetcher (remote control, the dashboard's live view)."""
        url, options = self.broker_url, self.conf.broker_transport_options
        if url.split(":", 1)[0] in AMQP_SCHEMES:
            from conveyor.brokers.amqp import with_state_defaults

            conf = self.conf
            options = with_state_defaults(options, conf.result_backend, conf.result_backend_transport_options)
        return open_broker(url, options)

    @property
    def broker_url(self) -> str:
        return self.conf.broker_url or DEFAULT_URL

    @property
    def backend(self) -> ResultBackend:
        """The result backend, created from `result_backend` on first use.

        With no `result_backend`, the embedded stores (SQLite, memory) keep
        results beside the broker's queues; other brokers get no backend.
        """
        if self._backend is None:
            url = self.conf.result_backend
            # rpc:// sends results through the broker's connection (taken before the lock: it locks too).
            through = {"broker": self.broker} if url and url.split(":", 1)[0] == "rpc" else {}
            with self._lock:
                if self._backend is None:
                    if url is None and self.broker_url.split(":", 1)[0] in ("sqlite", "memory"):
                        url = self.broker_url
                    self._backend = backend_from_url(
                        url,
                        self.conf.result_backend_transport_options,
                        serializer=self.conf.result_serializer,
                        accept=self.conf.result_accept_content or self.conf.accept_content,
                        expires=self.conf.result_expires,
                        **through,
                    )
        return self._backend

    @property
    def router(self) -> Router:
        conf = self.conf
        key = (id(conf.task_queues), id(conf.task_routes), hash(conf.task_default_queue))
        if self._router is None or self._router[0] != key:
            self._router = (key, Router(conf.task_queues or (), conf.task_routes, conf.task_default_queue))
        return self._router[1]

    def default_queues(self) -> list[str]:
        """Queues a worker consumes without -Q: every queue in task_queues, else the default."""
        if self.conf.task_queues:
            return [q.name for q in self.conf.task_queues]
        return [self.conf.task_default_queue]

    @property
    def signing(self) -> Signing | None:
        """The message signing the settings configure (`signing.py`), or None."""
        conf = self.conf
        given = (conf.task_signing_key, conf.task_signing_old_keys, conf.security_key, conf.security_certificate,
                 conf.security_cert_store, conf.security_digest, conf.security_key_password)  # fmt: skip
        cached = self._signing
        if cached is None or cached[0] != given:
            cached = self._signing = (given, signing_from_settings(conf))
        return cached[1]

    def setup_security(
        self,
        allowed_serializers: Sequence[str] | None = None,
        key: str | None = None,
        key_password: str | None = None,
        cert: str | None = None,
        store: str | None = None,
        digest: str | None = None,
        serializer: str = "json",
    ) -> None:
        """Sign every message with an X.509 key, as Celery's `setup_security` does: arguments
        override the `security_*` settings; messages not signed by a certificate of the store
        are refused. (`allowed_serializers` and `serializer` are Celery's: Conveyor signs the
        message whatever its serializer.)"""
        conf = self.conf
        for name, value in (("security_key", key), ("security_key_password", key_password),
                            ("security_certificate", cert), ("security_cert_store", store),
                            ("security_digest", digest)):  # fmt: skip
            if value is not None:
                setattr(conf, name, value)
        if self.signing is None:
            raise ImproperlyConfigured(
                "setup_security needs security_key, security_certificate and security_cert_store"
            )

    def close(self) -> None:
        """Close the broker and backend connections (they reopen on next use)."""
        with self._lock:
            for resource in (self._broker, self._backend):
                if resource is not None:
                    resource.close()
            self._broker = self._backend = None

    # -- sending -------------------------------------------------------------------------------
    @property
    def producer(self) -> Producer:
        """What sends this app's messages (see `conveyor.producer`)."""
        producer = self._producer
        if producer is None:
            producer = self._producer = Producer(self)
        return producer

    def send_task(
        self,
        name: str,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[Any]:
        """Send a task by name (it need not be registered here); an AsyncResult.

        Takes the options of `Task.apply_async`, and `task_id`, `link`, `link_error`, `shadow`.
        """
        producer = self.producer
        return producer.send(name, args, kwargs, producer.options(options))

    def confirm_published(self) -> None:
        """Wait until the broker has taken what this thread published (see `Transport.confirm`)."""
        if self._broker is not None:
            self._broker.transport.confirm()

    def signature(
        self, name: str, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None, **options: Any
    ) -> Signature:
        return Signature(name, args, kwargs, options, app=self)

    def run_eagerly(
        self, task: Task[Any, R], args: tuple[Any, ...], kwargs: dict[str, Any], task_id: str | None,
        options: dict[str, Any],
    ) -> AsyncResult[R]:  # fmt: skip
        """Run `task` in this process now, as a worker would (`Task.apply`, `task_always_eager`)."""
        return run_eagerly(task, args, kwargs, task_id, options)

    @property
    def control(self) -> Control:
        """Remote control of workers: `app.control.revoke(task_id, terminate=True)`."""
        return Control(self)

    def AsyncResult(self, task_id: str) -> AsyncResult[Any]:  # noqa: N802 - Celery's name
        """A handle on a task's result by id."""
        return AsyncResult(task_id, self)

    def __repr__(self) -> str:
        return f"<Conveyor {self.main or '__main__'}>"


def import_object(spec: str) -> Any:
    """`'package.module'`, or an attribute of it: `'package.module:attribute'`."""
    module_name, _, attribute = spec.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attribute) if attribute else module


def symbol_by_name(spec: str) -> Any:
    """What Celery's "module:name" or "module.name" strings name (`task_cls`, `beat_scheduler`)."""
    return import_object(spec if ":" in spec else ":".join(spec.rsplit(".", 1)))


def _task_class(spec: type[Task[Any, Any]] | str) -> type[Task[Any, Any]]:
    """`task_cls` as a class or Celery's "module:Class" (or "module.Class") string."""
    if isinstance(spec, str):
        spec = symbol_by_name(spec)
    if not (isinstance(spec, type) and issubclass(spec, Task)):
        raise ImproperlyConfigured(f"task_cls must be a Task subclass, not {spec!r}")
    return spec


def discover_tasks(packages: Sequence[str] | Callable[[], Sequence[str]] | None, related_name: str) -> None:
    """Import `<package>.<related_name>` for each package that has it."""
    if packages is None:
        packages = _django_apps()
    elif callable(packages):
        packages = packages()
    for package in packages:
        module = f"{package}.{related_name}"
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name not in (module, package):  # a missing import inside the module is a real error
                raise


def _django_apps() -> list[str]:
    """The installed Django apps' packages (Django set up first, as Celery's Django fixup does)."""
    try:
        import django
        from django.apps import apps
        from django.conf import settings
    except ImportError:
        return []
    if not settings.configured and not os.environ.get("DJANGO_SETTINGS_MODULE"):
        return []
    if not apps.ready:
        django.setup()
    return [config.name for config in apps.get_app_configs()]


set_default_app_factory(Conveyor)
Celery = Conveyor
