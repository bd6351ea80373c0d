"""An in-process transport with the same lease semantics as the real ones.

Used by tests and `task_always_eager`; brokers with the same `memory://name`
URL in one process share their queues, so a producer and a worker thread can
talk through it.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from conveyor.brokers.base import DeadLetter, Delivery, Outgoing, Transport, deadline_wait
from conveyor.brokers.state import EVENTS_KEPT


@dataclass
class _Record:
    queue: str
    priority: int
    seq: int
    body: bytes
    visible_at: float = 0.0
    lease: str | None = None
    attempts: int = 0


class MemoryStore:
    """The queues and the shared state behind every memory broker of one URL."""

    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.records: dict[int, _Record] = {}
        self.ready: dict[str, list[tuple[int, int]]] = {}  # queue -> heap of (priority, seq)
        self.waiting: list[tuple[float, int, str | None]] = []  # (visible_at, seq, lease)
        self.dead: list[DeadLetter] = []
        self.events: deque[bytes] = deque(maxlen=EVENTS_KEPT)
        self.workers: dict[str, tuple[float, bytes]] = {}
        self.revoked: dict[str, tuple[float, bytes]] = {}
        self.buckets: dict[str, float] = {}
        self.kv: dict[str, dict[str, bytes]] = {}
        self.seq = itertools.count()


_STORES: weakref.WeakValueDictionary[str, MemoryStore] = weakref.WeakValueDictionary()
_STORES_LOCK = threading.Lock()


class MemoryTransport(Transport):
    def __init__(self, url: str = "memory://", options: Mapping[str, Any] | None = None) -> None:
        super().__init__(url, options)
        with _STORES_LOCK:
            store = _STORES.get(url)
            if store is None:
                store = _STORES[url] = MemoryStore()
        self.store = store

    def _make_ready(self, record: _Record) -> None:
        record.lease, record.visible_at = None, 0.0
        heapq.heappush(self.store.ready.setdefault(record.queue, []), (record.priority, record.seq))

    def _promote_due(self, now: float) -> None:
        waiting = self.store.waiting
        while waiting and waiting[0][0] <= now:
            visible_at, seq, lease = heapq.heappop(waiting)
            record = self.store.records.get(seq)
            # Skip entries made stale by an ack, a renewal or a requeue.
            if record and record.lease == lease and record.visible_at == visible_at:
                self._make_ready(record)

    def _hold(self, record: _Record, until: float, lease: str | None) -> None:
        record.visible_at, record.lease = until, lease
        heapq.heappush(self.store.waiting, (until, record.seq, lease))

    def publish(self, messages: Sequence[Outgoing]) -> None:
        now = time.time()
        with self.store.lock:
            for out in messages:
                seq = next(self.store.seq)
                record = _Record(out.queue, out.priority, seq, out.body)
                self.store.records[seq] = record
                if out.not_before is not None and out.not_before > now:
                    self._hold(record, out.not_before, None)
                else:
                    self._make_ready(record)
            self.store.lock.notify_all()

    def fetch(self, queues: Sequence[str], limit: int, timeout: float) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        store = self.store
        with store.lock:
            while True:
                now = time.time()
                self._promote_due(now)
                taken = self._take(queues, limit, now)
                if taken or deadline_wait(deadline) <= 0:
                    return taken
                wait = deadline_wait(deadline)
                if store.waiting:
                    wait = min(wait, max(0.0, store.waiting[0][0] - now))
                store.lock.wait(wait)

    def _take(self, queues: Sequence[str], limit: int, now: float) -> list[Delivery]:
        heaps = [(q, self.store.ready.get(q)) for q in queues]
        lease = uuid.uuid4().hex
        taken: list[Delivery] = []
        while len(taken) < limit:
            # The highest priority (lowest number), then the oldest, across the queues.
            best = min(((h[0], q) for q, h in heaps if h), default=None)
            if best is None:
                break
            (_, seq), queue = best
            heapq.heappop(self.store.ready[queue])
            record = self.store.records[seq]
            record.attempts += 1
            self._hold(record, now + self.lease_seconds, lease)
            taken.append(Delivery(queue, record.body, (seq, lease), record.attempts))
        return taken

    def _owned(self, delivery: Delivery) -> _Record | None:
        seq, lease = delivery.tag
        record = self.store.records.get(seq)
        return record if record is not None and record.lease == lease else None

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        with self.store.lock:
            for delivery in deliveries:
                if self._owned(delivery):
                    del self.store.records[delivery.tag[0]]

    def requeue(self, deliveries: Sequence[Delivery], delay: float = 0.0, *, redelivery: bool = False) -> None:
        with self.store.lock:
            for delivery in deliveries:
                record = self._owned(delivery)
                if record:
                    record.attempts -= 0 if redelivery else 1
                    if delay > 0:
                        self._hold(record, time.time() + delay, None)
                    else:
                        self._make_ready(record)
            self.store.lock.notify_all()

    def renew(self, deliveries: Sequence[Delivery]) -> list[Delivery]:
        lost = []
        with self.store.lock:
            until = time.time() + self.lease_seconds
            for delivery in deliveries:
                record = self._owned(delivery)
                if record:
                    self._hold(record, until, record.lease)
                else:
                    lost.append(delivery)
        return lost

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        with self.store.lock:
            if self._owned(delivery):
                del self.store.records[delivery.tag[0]]
                self.store.dead.append(DeadLetter(delivery.queue, delivery.body, reason, time.time()))

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        with self.store.lock:
            return list(reversed(self.store.dead[-limit:]))

    def requeue_dead_letters(self, limit: int) -> int:
        with self.store.lock:  # re-entrant: publish takes it again
            taken = self.store.dead[:limit]
            del self.store.dead[:limit]
            self.publish([Outgoing(letter.queue, letter.body) for letter in taken])
        return len(taken)

    def purge(self, queues: Sequence[str]) -> int:
        with self.store.lock:
            doomed = [s for s, r in self.store.records.items() if r.queue in queues and r.lease is None]
            for seq in doomed:
                del self.store.records[seq]
            for queue in queues:
                self.store.ready.pop(queue, None)
            return len(doomed)

    def queue_sizes(self, queues: Sequence[str] | None = None) -> dict[str, int]:
        with self.store.lock:
            sizes = dict.fromkeys(queues or (), 0)
            for record in self.store.records.values():
                if queues is None or record.queue in sizes:
                    sizes[record.queue] = sizes.get(record.queue, 0) + 1
            return sizes

    def interrupt(self) -> None:
        with self.store.lock:
            self.store.lock.notify_all()
