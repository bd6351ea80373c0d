"""The Redis result backend: one Lua script per state change, waiters woken by the write.

Keys of task `id` (prefix `P` = `global_keyprefix` + `conveyor`), all with the
hash tag `{id}` so a task's keys share a cluster slot:

| key | type | content |
|---|---|---|
| `P:task:{id}` | HASH | `state`, `meta` (the serialized result record) |
| `P:history:{id}` | LIST | history entries, oldest first |
| `P:done:{id}` | LIST | the ready meta, once the task is ready: what `get()` blocks on |

All three expire after `result_expires`. A write never replaces a SUCCESS.
`get()` blocks in `BLMOVE done done` (which leaves the entry for other
waiters) instead of polling, and gets the result in the same reply.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from typing import Any

from conveyor import exceptions, redisdb, states
from conveyor.backends.base import ResultBackend, StateUpdate, StoredTask
from conveyor.exceptions import BackendConnectionError, BackendError
from conveyor.lua import script

WRITE = script("write_results")


class RedisBackend(ResultBackend):
    def __init__(self, url: str, options: Any = None, **kwargs: Any) -> None:
        super().__init__(url, options, **kwargs)
        self.prefix = f"{self.options.get('global_keyprefix', '')}conveyor"
        self.client = redisdb.connect(url, self.options)
        self._scripts = redisdb.Scripts(self.client, {"write": WRITE})

    def _keys(self, task_id: str) -> list[str]:
        tag = f"{{{task_id}}}"
        return [f"{self.prefix}:task:{tag}", f"{self.prefix}:history:{tag}", f"{self.prefix}:done:{tag}"]

    def _translate(self, where: str) -> Any:
        return redisdb.translate(BackendError, BackendConnectionError, f"Redis backend {where}")

    def write(self, updates: Sequence[StateUpdate]) -> None:
        if not updates:
            return
        now = time.time()
        calls: list[tuple[list[str], list[Any]]] = []
        for u in updates:
            ttl_ms = max(1, int((u.expires_at - now) * 1000)) if u.expires_at is not None else 0
            ready = "1" if u.state in states.READY_STATES else "0"
            args = [u.state, u.meta, ttl_ms, ready, len(u.history), *u.history]
            if calls and not self._scripts.cluster:
                calls[0][0].extend(self._keys(u.task_id))
                calls[0][1].extend(args)
            else:
                calls.append((self._keys(u.task_id), args))
        with self._translate("write"):
            batch = self._scripts.batch()
            for keys, args in calls:
                batch.script("write", keys, args)
            batch.execute()

    def read(self, task_ids: Sequence[str]) -> dict[str, bytes]:
        with self._translate("read"):
            pipe = self.client.pipeline(transaction=False)
            for task_id in task_ids:
                pipe.hget(self._keys(task_id)[0], "meta")
            return {t: meta for t, meta in zip(task_ids, pipe.execute()) if meta is not None}

    def read_history(self, task_id: str) -> list[bytes]:
        with self._translate("read_history"):
            return list(self.client.lrange(self._keys(task_id)[1], 0, -1))

    def recent(self, limit: int) -> list[StoredTask]:
        # Redis keeps no order of writes: a task's remaining time to live tells it (the latest
        # written has the longest). SCAN walks every key; the dashboard calls this once, at start.
        found: list[tuple[float, StoredTask]] = []
        marker = f"{self.prefix}:task:"
        with self._translate("recent"):
            keys = self.client.scan_iter(match=f"{marker}*", count=1000, _type="HASH")
            while chunk := list(itertools.islice(keys, 1000)):
                pipe = self.client.pipeline(transaction=False)
                for key in chunk:
                    task_id = key.decode()[len(marker) :].removeprefix("{").removesuffix("}")
                    pipe.hget(key, "meta").lindex(self._keys(task_id)[1], -1).pttl(key)
                replies = pipe.execute()
                for index, key in enumerate(chunk):
                    meta, entry, ttl = replies[3 * index : 3 * index + 3]
                    if meta is not None:
                        task_id = key.decode()[len(marker) :].removeprefix("{").removesuffix("}")
                        found.append((float("inf") if ttl < 0 else ttl, StoredTask(task_id, meta, entry)))
        found.sort(key=lambda item: item[0], reverse=True)
        return [task for _, task in found[:limit]]

    def delete(self, task_ids: Sequence[str]) -> None:
        with self._translate("delete"):
            pipe = self.client.pipeline(transaction=False)
            for task_id in task_ids:
                pipe.delete(*self._keys(task_id))
            pipe.execute()

    def wait_for(self, task_id: str, timeout: float | None = None) -> dict[str, Any]:
        """One blocking command: BLMOVE returns the ready meta itself (at once if already there)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        interval = float(self.options.get("polling_interval", 5.0))
        done_key = self._keys(task_id)[2]
        while True:
            remaining = interval if deadline is None else min(interval, deadline - time.monotonic())
            ready = None
            if remaining > 0:
                with self._translate("wait"):
                    # On the thread's own connection, past redis-py's per-command layers
                    # (a third less CPU per get(); see redisdb.Scripts).
                    wait = ("BLMOVE", done_key, done_key, "RIGHT", "LEFT", round(max(0.01, remaining), 3))
                    ready = self._scripts.execute([wait])[0]
            meta = self.decode(ready) if ready is not None else self.get_meta(task_id)
            if meta["status"] in states.READY_STATES:
                return meta
            if deadline is not None and time.monotonic() >= deadline:
                raise exceptions.TimeoutError(f"task {task_id} was not ready within {timeout} seconds")

    def close(self) -> None:
        self._scripts.close()
        self.client.close()
