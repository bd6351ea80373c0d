"""An in-process result backend; backends with the same `memory://name` URL share results."""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Sequence
from typing import Any

from conveyor import states
from conveyor.backends.base import ResultBackend, StateUpdate, StoredTask, Waiter


class _Store:
    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.generation = 0
        self.meta: dict[str, tuple[str, bytes, float | None]] = {}
        self.history: dict[str, list[bytes]] = {}


_STORES: weakref.WeakValueDictionary[str, _Store] = weakref.WeakValueDictionary()
_STORES_LOCK = threading.Lock()


class _MemoryWaiter(Waiter):
    def __init__(self, store: _Store) -> None:
        super().__init__()
        self.store = store
        self.seen = store.generation

    def wait(self, timeout: float) -> None:
        with self.store.changed:
            self.store.changed.wait_for(lambda: self.store.generation != self.seen, timeout)
            self.seen = self.store.generation


class MemoryBackend(ResultBackend):
    def __init__(self, url: str = "memory://", options: Any = None, **kwargs: Any) -> None:
        super().__init__(url, options, **kwargs)
        with _STORES_LOCK:
            store = _STORES.get(url)
            if store is None:
                store = _STORES[url] = _Store()
        self._store = store

    def write(self, updates: Sequence[StateUpdate]) -> None:
        with self._store.changed:
            for update in updates:
                current = self._store.meta.get(update.task_id)
                if current is None or current[0] != states.SUCCESS:
                    self._store.meta[update.task_id] = (update.state, update.meta, update.expires_at)
                history = self._store.history.setdefault(update.task_id, [])
                history.extend(entry for entry in update.history if entry not in history[-32:])
            self._store.generation += 1
            self._store.changed.notify_all()

    def read(self, task_ids: Sequence[str]) -> dict[str, bytes]:
        now = time.time()
        with self._store.changed:
            found = {}
            for task_id in task_ids:
                item = self._store.meta.get(task_id)
                if item is not None and (item[2] is None or item[2] > now):
                    found[task_id] = item[1]
            return found

    def read_history(self, task_id: str) -> list[bytes]:
        with self._store.changed:
            return list(self._store.history.get(task_id, ()))

    def delete(self, task_ids: Sequence[str]) -> None:
        with self._store.changed:
            for task_id in task_ids:
                self._store.meta.pop(task_id, None)
                self._store.history.pop(task_id, None)

    def recent(self, limit: int) -> list[StoredTask]:
        now = time.time()
        with self._store.changed:
            live = [(t, item) for t, item in self._store.meta.items() if item[2] is None or item[2] > now]
            latest = list(reversed(live))[:limit]  # dicts keep insertion order: the newest task last
            history = self._store.history
            return [StoredTask(t, meta, history[t][-1] if history.get(t) else None) for t, (_, meta, _) in latest]

    def waiter(self, task_id: str) -> Waiter:
        return _MemoryWaiter(self._store)

    def cleanup(self) -> int:
        now = time.time()
        with self._store.changed:
            doomed = [t for t, (_, _, exp) in self._store.meta.items() if exp is not None and exp <= now]
            for task_id in doomed:
                del self._store.meta[task_id]
                self._store.history.pop(task_id, None)
            return len(doomed)
