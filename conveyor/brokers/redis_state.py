"""The Redis state store: revocations, rate-limit buckets, key-value, workers and events.

Keys (prefix `P` as the transport's):

| key | type | content |
|---|---|---|
| `P:revoked:{id}` | STRING | a revocation's info, expiring with it |
| `P:revocations` | STRING | exists while any revocation does (fetches skip the check otherwise) |
| `P:bucket:{key}` | STRING | a rate limit's next free slot (ms) |
| `P:kv:{namespace}` | HASH | key -> value |
| `{P:workers}:expiry`, `{P:workers}:info` | ZSET, HASH | live workers: expiry time, announcement |
| `P:events` | LIST | the latest monitoring events |
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from conveyor.brokers.redis import RedisConnection
from conveyor.brokers.state import EVENTS_KEPT, EventsTrim, StateStore


class RedisStateStore(StateStore):
    def __init__(self, redis: RedisConnection) -> None:
        self.redis = redis
        self._trim = EventsTrim()

    @property
    def _revoked_key(self) -> str:
        return f"{self.redis.prefix}:revoked"

    def revoke(self, task_ids: Sequence[str], info: bytes, expires_at: float) -> None:
        # One key per revocation, with its own expiry: Redis forgets them for us.
        ttl_ms = max(1, int((expires_at - time.time()) * 1000))
        with self.redis.translate("revoke"):
            batch = self.redis.scripts.batch()
            for task_id in task_ids:
                batch.command("SET", f"{self._revoked_key}:{{{task_id}}}", info, "PX", ttl_ms)
            batch.script("mark_revoked", [self.redis.revocations_key], [ttl_ms])
            batch.execute()

    def revoked(self, task_ids: Sequence[str]) -> dict[str, bytes]:
        if not task_ids:
            return {}
        keys = [f"{self._revoked_key}:{{{task_id}}}" for task_id in task_ids]
        with self.redis.translate("revoked"):
            if self.redis.cluster:  # one slot per key: MGET would be CROSSSLOT
                values = self.redis.scripts.execute([("GET", key) for key in keys])
            else:
                values = self.redis.scripts.execute([("MGET", *keys)])[0]
        return {task_id: value for task_id, value in zip(task_ids, values) if value is not None}

    def _kv_key(self, namespace: str) -> str:
        return f"{self.redis.prefix}:kv:{{{namespace}}}"

    def kv_items(self, namespace: str) -> dict[str, bytes]:
        with self.redis.translate("kv_items"):
            return {k.decode(): v for k, v in self.redis.direct.hgetall(self._kv_key(namespace)).items()}

    def kv_get(self, namespace: str, key: str) -> bytes | None:
        with self.redis.translate("kv_get"):
            return self.redis.direct.hget(self._kv_key(namespace), key)  # type: ignore[no-any-return]

    def kv_swap(self, namespace: str, key: str, expected: bytes | None, new: bytes | None) -> bool:
        args = [key, expected or b"", new or b"", "1" if expected is not None else "0", "1" if new is not None else "0"]
        with self.redis.translate("kv_swap"):
            return bool(self.redis.scripts.run("kv_swap", [self._kv_key(namespace)], args))

    def take_token(self, key: str, rate: float) -> float:
        with self.redis.translate("take_token"):
            wait_ms = self.redis.scripts.run(
                "take_token",
                [f"{self.redis.prefix}:bucket:{{{key}}}"],
                [int(time.time() * 1000), max(1, int(1000 / rate))],
            )
        return float(wait_ms) / 1000

    @property
    def _events_key(self) -> str:
        return f"{self.redis.prefix}:events"

    def add_events(self, events: Sequence[bytes]) -> None:
        if not events:
            return
        with self.redis.translate("add_events"):
            # Sent without waiting, like acks (Scripts.send): events are best effort, and the
            # writer goes on to the next batch a round trip sooner.
            self.redis.scripts.send(("RPUSH", self._events_key, *events))
            if self._trim.due():
                self.redis.scripts.send(("LTRIM", self._events_key, -EVENTS_KEPT, -1))

    def recent_events(self, limit: int = 1000) -> list[bytes]:
        with self.redis.translate("recent_events"):
            return list(self.redis.direct.lrange(self._events_key, -limit, -1))

    @property
    def _workers_key(self) -> str:
        return f"{{{self.redis.prefix}:workers}}:expiry"

    @property
    def _workers_info_key(self) -> str:
        return f"{{{self.redis.prefix}:workers}}:info"

    def register_worker(self, hostname: str, info: bytes, ttl: float) -> None:
        with self.redis.translate("register_worker"):
            pipe = self.redis.direct.pipeline(transaction=False)
            pipe.zadd(self._workers_key, {hostname: time.time() + ttl})
            pipe.hset(self._workers_info_key, hostname, info)
            pipe.execute()

    def unregister_worker(self, hostname: str) -> None:
        with self.redis.translate("unregister_worker"):
            pipe = self.redis.direct.pipeline(transaction=False)
            pipe.zrem(self._workers_key, hostname)
            pipe.hdel(self._workers_info_key, hostname)
            pipe.execute()

    def workers(self) -> dict[str, bytes]:
        with self.redis.translate("workers"):
            live = [h.decode() for h in self.redis.direct.zrangebyscore(self._workers_key, time.time(), "+inf")]
            if not live:
                return {}
            infos = self.redis.direct.hmget(self._workers_info_key, live)
        return {hostname: info for hostname, info in zip(live, infos) if info is not None}

    def close(self) -> None:
        self.redis.close()
