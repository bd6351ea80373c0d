"""The in-process state store, beside the memory transport's queues."""

from __future__ import annotations

import time
from collections.abc import Sequence

from conveyor.brokers.memory import MemoryStore
from conveyor.brokers.state import StateStore


class MemoryStateStore(StateStore):
    def __init__(self, store: MemoryStore) -> None:
        self.store = store

    def revoke(self, task_ids: Sequence[str], info: bytes, expires_at: float) -> None:
        with self.store.lock:
            for task_id in task_ids:
                self.store.revoked[task_id] = (expires_at, info)

    def revoked(self, task_ids: Sequence[str]) -> dict[str, bytes]:
        now = time.time()
        with self.store.lock:
            found = {t: self.store.revoked.get(t) for t in task_ids}
            return {t: entry[1] for t, entry in found.items() if entry is not None and entry[0] > now}

    def kv_items(self, namespace: str) -> dict[str, bytes]:
        with self.store.lock:
            return dict(self.store.kv.get(namespace, {}))

    def kv_get(self, namespace: str, key: str) -> bytes | None:
        with self.store.lock:
            return self.store.kv.get(namespace, {}).get(key)

    def kv_swap(self, namespace: str, key: str, expected: bytes | None, new: bytes | None) -> bool:
        with self.store.lock:
            space = self.store.kv.setdefault(namespace, {})
            if space.get(key) != expected:
                return False
            if new is None:
                space.pop(key, None)
            else:
                space[key] = new
            return True

    def take_token(self, key: str, rate: float) -> float:
        with self.store.lock:
            now = time.time()
            due = max(now, self.store.buckets.get(key, 0.0))
            if due > now:
                return due - now
            self.store.buckets[key] = due + 1.0 / rate
            return 0.0

    def add_events(self, events: Sequence[bytes]) -> None:
        with self.store.lock:
            self.store.events.extend(events)

    def recent_events(self, limit: int = 1000) -> list[bytes]:
        with self.store.lock:
            return list(self.store.events)[-limit:]

    def register_worker(self, hostname: str, info: bytes, ttl: float) -> None:
        with self.store.lock:
            self.store.workers[hostname] = (time.time() + ttl, info)

    def unregister_worker(self, hostname: str) -> None:
        with self.store.lock:
            self.store.workers.pop(hostname, None)

    def workers(self) -> dict[str, bytes]:
        now = time.time()
        with self.store.lock:
            return {h: info for h, (until, info) in self.store.workers.items() if until > now}
