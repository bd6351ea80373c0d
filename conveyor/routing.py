"""Queues, exchanges, and the router that picks a task's queue.

Conveyor's SQLite, memory and Redis brokers have named queues and no
exchanges, so every route resolves to one queue name by this rule, first match
wins:

1. `apply_async(queue=...)`;
2. `apply_async(exchange=..., routing_key=...)`: the first of `task_queues`
   bound to that exchange (or any exchange, if none given) with that routing key;
3. `task_routes`: a dict (exact names first, then glob patterns in order), a
   list of such dicts or router functions, or a router function;
4. the task's own `queue` attribute;
5. `task_default_queue`.

`Queue` and `Exchange` keep kombu's constructor shapes, so a configuration
written for Celery imports them from `conveyor` unchanged.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

from conveyor.exceptions import ImproperlyConfigured


@dataclass(frozen=True)
class Exchange:
    """An AMQP exchange. Outside the AMQP broker it only takes part in routing."""

    name: str = ""
    type: str = "direct"
    durable: bool = True
    options: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __init__(self, name: str = "", type: str = "direct", durable: bool = True, **options: Any):  # noqa: A002
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "type", type)
        object.__setattr__(self, "durable", durable)
        object.__setattr__(self, "options", options)


@dataclass(frozen=True)
class Queue:
    """A named queue, bound to an exchange with a routing key (kombu's shape)."""

    name: str
    exchange: Exchange | None = None
    routing_key: str = ""
    options: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __init__(
        self,
        name: str,
        exchange: Exchange | str | None = None,
        routing_key: str | None = None,
        **options: Any,
    ):
        if not name:
            raise ImproperlyConfigured("a Queue needs a name")
        if isinstance(exchange, str):
            exchange = Exchange(exchange)
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "exchange", exchange)
        object.__setattr__(self, "routing_key", name if routing_key is None else routing_key)
        object.__setattr__(self, "options", options)

    @property
    def exchange_name(self) -> str:
        return self.exchange.name if self.exchange is not None else self.name


RouterFunction = Callable[..., Any]
Routes = Union[Mapping[str, Any], RouterFunction, Sequence[Union[Mapping[str, Any], RouterFunction]]]


def _route_queue(route: Any) -> str | None:
    if route is None:
        return None
    if isinstance(route, str):
        return route
    if isinstance(route, Queue):
        return route.name
    if isinstance(route, Mapping):
        queue = route.get("queue")
        if isinstance(queue, Queue):
            return queue.name
        return queue if isinstance(queue, str) else None
    raise ImproperlyConfigured(f"task_routes: a route must be a queue name or a dict, not {route!r}")


class _MapRouter:
    """One dict of task_routes: exact names first, then globs (or re.Pattern keys)."""

    def __init__(self, mapping: Mapping[Any, Any]) -> None:
        self.exact: dict[str, Any] = {}
        self.patterns: list[tuple[re.Pattern[str], Any]] = []
        for key, route in mapping.items():
            _route_queue(route)  # validate now, not at the first call
            if isinstance(key, re.Pattern):
                self.patterns.append((key, route))
            elif any(ch in key for ch in "*?["):
                self.patterns.append((re.compile(fnmatch.translate(key)), route))
            else:
                self.exact[key] = route

    def __call__(self, name: str, *_: Any, **__: Any) -> Any:
        if name in self.exact:
            return self.exact[name]
        for pattern, route in self.patterns:
            if pattern.match(name):
                return route
        return None


def _routers(routes: Routes | None) -> list[RouterFunction]:
    if routes is None:
        return []
    if isinstance(routes, Mapping):
        return [_MapRouter(routes)]
    if callable(routes):
        return [routes]
    if isinstance(routes, Sequence) and not isinstance(routes, str):
        result: list[RouterFunction] = []
        for item in routes:
            result.extend(_routers(item))
        return result
    raise ImproperlyConfigured(f"task_routes must be a dict, a router function or a list of them, not {routes!r}")


class Router:
    """Resolves the queue for one task call (see the module docstring for the rule)."""

    def __init__(self, queues: Iterable[Queue], routes: Routes | None, default_queue: str) -> None:
        self.queues = list(queues)
        self.routers = _routers(routes)
        self.default_queue = default_queue

    def route(
        self,
        name: str,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        queue: str | Queue | None = None,
        exchange: str | Exchange | None = None,
        routing_key: str | None = None,
        task_queue: str | None = None,
    ) -> str:
        if queue is not None:
            return queue.name if isinstance(queue, Queue) else queue
        if routing_key is not None or exchange is not None:
            bound = self._bound_queue(exchange, routing_key)
            if bound is not None:
                return bound
        for router in self.routers:
            found = _route_queue(router(name, args, kwargs or {}, {}, task=None))
            if found:
                return found
        return task_queue or self.default_queue

    def _bound_queue(self, exchange: str | Exchange | None, routing_key: str | None) -> str | None:
        exchange_name = exchange.name if isinstance(exchange, Exchange) else exchange
        for candidate in self.queues:
            if exchange_name not in (None, "", candidate.exchange_name):
                continue
            if routing_key is None or candidate.routing_key == routing_key:
                return candidate.name
        # The anonymous exchange routes by queue name, as in AMQP.
        return routing_key if exchange_name in (None, "") else None
