"""Result backends by URL scheme. Each implementation is imported only when used."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from conveyor.backends.base import ResultBackend, StateUpdate, Waiter
from conveyor.exceptions import ImproperlyConfigured
from conveyor.extras import requires
from conveyor.urls import checked


class DisabledBackend(ResultBackend):
    """Used when no result backend is configured: writes nothing, and says so when read."""

    def write(self, updates: Sequence[StateUpdate]) -> None:
        pass

    def read(self, task_ids: Sequence[str]) -> dict[str, bytes]:
        raise ImproperlyConfigured("no result backend is configured: set result_backend to read task results")

    def read_history(self, task_id: str) -> list[bytes]:
        self.read([task_id])
        return []

    def delete(self, task_ids: Sequence[str]) -> None:
        pass


def _memory(url: str, options: Mapping[str, Any], **kwargs: Any) -> ResultBackend:
    from conveyor.backends.memory import MemoryBackend

    return MemoryBackend(url, options, **kwargs)


def _sqlite(url: str, options: Mapping[str, Any], **kwargs: Any) -> ResultBackend:
    from conveyor.backends.sqlite import SQLiteBackend

    return SQLiteBackend(url, options, **kwargs)


def _sql(url: str, options: Mapping[str, Any], **kwargs: Any) -> ResultBackend:
    with requires("sql", "the SQL result backend"):
        from conveyor.backends.sql import SQLBackend
    return SQLBackend(url, options, **kwargs)


def _django(url: str, options: Mapping[str, Any], **kwargs: Any) -> ResultBackend:
    with requires("django", "the Django result backend"):
        from conveyor.backends.djangodb import DjangoBackend

    return DjangoBackend(url, options, **kwargs)


def _redis(url: str, options: Mapping[str, Any], **kwargs: Any) -> ResultBackend:
    with requires("redis", "the Redis result backend"):
        from conveyor.backends.redis import RedisBackend

    return RedisBackend(url, options, **kwargs)


def _rpc(url: str, options: Mapping[str, Any], **kwargs: Any) -> ResultBackend:
    with requires("amqp", "the rpc:// result backend"):
        from conveyor.backends.rpc import RPCBackend

    return RPCBackend(url, options, **kwargs)


SCHEMES: dict[str, Callable[..., ResultBackend]] = {
    "rpc": _rpc,
    "memory": _memory,
    "cache+memory": _memory,  # Celery's in-process result store for tests
    "sqlite": _sqlite,
    "django": _django,
    **dict.fromkeys(("redis", "rediss", "unix", "sentinel", "redis+cluster", "rediss+cluster"), _redis),
}


def backend_from_url(url: str | None, options: Mapping[str, Any] | None = None, **kwargs: Any) -> ResultBackend:
    """Create the result backend a URL names; None gives a DisabledBackend."""
    if url is None:
        return DisabledBackend("disabled://", options, **kwargs)
    scheme = (
        "django" if url == "django-db" else urlsplit(checked(url, "result_backend")).scheme
    )  # Celery's name for the Django database
    # Celery's SQL URLs: db+ before any SQLAlchemy URL (db+postgresql://, db+mysql+pymysql://, ...).
    factory = _sql if scheme.startswith("db+") else SCHEMES.get(scheme)
    if factory is None:
        known = ", ".join([*(f"{s}://" for s in sorted(SCHEMES)), "db+<sqlalchemy url>"])
        raise ImproperlyConfigured(f"result_backend {url!r}: unsupported scheme {scheme!r} (supported: {known})")
    return factory(url, options or {}, **kwargs)


__all__ = ["SCHEMES", "DisabledBackend", "ResultBackend", "StateUpdate", "Waiter", "backend_from_url"]
