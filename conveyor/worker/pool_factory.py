"""The pool a `-P/--pool` name selects (each pool module is imported only when chosen)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from conveyor.config import POOL_NAMES
from conveyor.worker.pools import Pool, SoloPool, ThreadPool

if TYPE_CHECKING:
    from conveyor.app import Conveyor


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
