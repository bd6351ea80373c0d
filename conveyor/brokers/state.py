"""The state store interface: what workers, beat and clients share besides messages.

Revocations, rate-limit buckets, a small key-value store with compare-and-set
(chords, beat, deduplication, control replies), the registry of live workers
and the recent monitoring events. A broker URL opens a transport and a state
store together (`conveyor.brokers.open_broker`): Redis, SQLite and memory keep
both in one store; RabbitMQ keeps messages only and takes the state store its
`state_url` names.
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from collections.abc import Sequence

#: How many records of monitoring events a store keeps (a worker writes one per batch, of up to
#: 64 events: `worker/events.py`); the dashboard reads them as they come, and keeps its own list.
EVENTS_KEPT = 2_000
#: A store that drops old events with a command of its own does so on its first write of events
#: and every EVENTS_TRIM_EVERY-th after (`EventsTrim`): on Redis the trim cost as much as the
#: write, on SQLite a fifth. A store then holds at most EVENTS_TRIM_EVERY writes more per writer.
EVENTS_TRIM_EVERY = 32


class StateStore(ABC):
    """Shared state of a fleet. Thread-safe."""

    @abstractmethod
    def revoke(self, task_ids: Sequence[str], info: bytes, expires_at: float) -> None:
        """Remember that these tasks are revoked (with `info`) until `expires_at`."""

    @abstractmethod
    def revoked(self, task_ids: Sequence[str]) -> dict[str, bytes]:
        """The revocations among these task ids still remembered, with their info."""

    @abstractmethod
    def take_token(self, key: str, rate: float) -> float:
        """Take a token from the bucket `key` refilled at `rate` per second, shared by every worker.

        Returns 0 when granted, else the seconds until a token is due (nothing
        is taken). Tokens are spaced evenly (no bursts): `rate` per second
        across all callers.
        """

    @abstractmethod
    def kv_items(self, namespace: str) -> dict[str, bytes]:
        """Every key and value of a small shared namespace (beat state, runtime schedule entries)."""

    @abstractmethod
    def kv_get(self, namespace: str, key: str) -> bytes | None:
        """The value of `key` (None: absent)."""

    @abstractmethod
    def kv_swap(self, namespace: str, key: str, expected: bytes | None, new: bytes | None) -> bool:
        """Atomically set `key` to `new` (None deletes) if its value is still `expected` (None: absent).

        The one primitive beat needs: of many processes swapping the same
        expected value, exactly one succeeds.
        """

    def kv_put(self, namespace: str, key: str, value: bytes | None) -> None:
        """Set `key` to `value` (None deletes) whatever it holds now: the last writer wins."""
        while not self.kv_swap(namespace, key, self.kv_get(namespace, key), value):
            pass  # changed between the read and the swap: again, on the fresh value

    @abstractmethod
    def register_worker(self, hostname: str, info: bytes, ttl: float) -> None:
        """Announce a live worker for `ttl` seconds (repeated as a heartbeat)."""

    @abstractmethod
    def unregister_worker(self, hostname: str) -> None:
        """Remove a worker's announcement at shutdown."""

    @abstractmethod
    def workers(self) -> dict[str, bytes]:
        """Live workers' announcements, by hostname."""

    @abstractmethod
    def add_events(self, events: Sequence[bytes]) -> None:
        """Append monitoring events (at least the last EVENTS_KEPT are kept, older ones dropped)."""

    @abstractmethod
    def recent_events(self, limit: int = 1000) -> list[bytes]:
        """The latest events, oldest first."""

    def close(self) -> None:  # noqa: B027 - a store that borrows the transport's connection has none of its own
        """Release connections."""


class EventsTrim:
    """When a store's writes of events drop the oldest: its first, and every EVENTS_TRIM_EVERY-th
    after (a short-lived writer, such as a client sending task-sent events, trims once)."""

    def __init__(self) -> None:
        self._writes = itertools.count()  # thread-safe: next() holds the GIL

    def due(self) -> bool:
        return next(self._writes) % EVENTS_TRIM_EVERY == 0
