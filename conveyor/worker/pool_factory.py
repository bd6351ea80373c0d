"""The pool a `-P/--pool` name selects (each pool module is imported only when chosen)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from conveyor.config import POOL_NAMES
from conveyor.worker.pools import Pool, SoloPool, ThreadPool

if TYPE_CHECKING:
    from conveyor.app import Conveyor


#: Default concurrency of the asyncio pool: async tasks in flight on its loop.
ASYNCIO_CONCURRENCY = 100


def default_concurrency(name: str, configured: int | None, given: int | None) -> int:
    """How many tasks a pool runs at once: solo one, whatever -c says; else -c, the setting, or
    a process or thread per core (an event loop holds many)."""
    if name == "solo":
        return 1
    return given or configured or (ASYNCIO_CONCURRENCY if name == "asyncio" else os.cpu_count() or 1)


def create_pool(name: str, app: Conveyor, concurrency: int) -> Pool:
    """The pool a `-P/--pool` name selects."""
    if name in ("prefork", "processes"):
        from conveyor.worker.prefork import PreforkPool

        return PreforkPool(app, concurrency)
    if name == "solo":
        return SoloPool(app)
    if name in ("threads", "gevent", "eventlet"):
        return ThreadPool(app, concurrency)
    if name == "asyncio":
        from conveyor.worker.asyncpool import AsyncioPool

        return AsyncioPool(app, concurrency)
    raise ValueError(f"unknown pool {name!r}: choose one of {', '.join(POOL_NAMES)}")
