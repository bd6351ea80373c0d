"""The embedded SQLite transport: the default, no server needed.

One row per message (see `conveyor.sqlitedb.SCHEMA`). A row is *ready*
(deliverable now) or *waiting* until `visible_at`: a delayed message waits for
its eta, a leased one for its lease to lapse. So delays are held in the
database, not in worker memory, and a dead worker's deliveries come back with
no extra machinery: whichever consumer fetches next promotes every waiting row
that is due. Fetching claims rows inside one `BEGIN IMMEDIATE` transaction and
stamps them with a fresh lease token; ack and renew match on that token.

Idle consumers sleep on a local wake-up socket (`conveyor.wakeup`), signalled
by every publish and requeue; they also wake when the earliest waiting row
falls due, and at worst every `polling_interval` seconds.
"""

from __future__ import annotations

import hashlib
import heapq
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from conveyor import wakeup
from conveyor.brokers.base import DeadLetter, Delivery, Outgoing, Transport, claim_or_wait
from conveyor.exceptions import BrokerError
from conveyor.sqlitedb import Database, path_from_url

#: Longest sleep of an idle consumer between checks, should a signal be lost.
DEFAULT_POLLING_INTERVAL = 1.0


class SQLiteTransport(Transport):
    def __init__(self, url: str, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(url, options)
        self.db = Database(path_from_url(url), BrokerError)
        self.polling_interval = float(self.options.get("polling_interval", DEFAULT_POLLING_INTERVAL))
        # A wake-up channel per queue: a publish wakes the consumers of its queues only (not,
        # say, every worker's control thread at each task).
        self._notifiers: dict[str, wakeup.Notifier] = {}
        self._local = threading.local()
        self._listeners: list[wakeup.Listener] = []
        self._listeners_lock = threading.Lock()

    def _channel(self, queue: str) -> str:
        return wakeup.channel_directory(self.db.path, "q-" + hashlib.sha1(queue.encode()).hexdigest()[:16])

    def _notify(self, queues: Iterable[str]) -> None:
        for queue in set(queues):
            notifier = self._notifiers.get(queue)
            if notifier is None:
                notifier = self._notifiers.setdefault(queue, wakeup.Notifier(self._channel(queue)))
            notifier.notify()

    def _wake_signal(self, queues: Sequence[str]) -> wakeup.Listener | wakeup.Listeners:
        """This thread's wake-up sockets for these queues (each consuming thread waits on its own)."""
        mine: dict[str, wakeup.Listener] | None = getattr(self._local, "listeners", None)
        if mine is None:
            mine = self._local.listeners = {}
        for queue in queues:
            if queue not in mine:
                listener = mine[queue] = wakeup.Listener(self._channel(queue))
                with self._listeners_lock:
                    self._listeners.append(listener)
        if len(queues) == 1:
            return mine[queues[0]]
        return wakeup.Listeners([mine[queue] for queue in queues])

    def publish(self, messages: Sequence[Outgoing]) -> None:
        now = time.time()
        rows = [
            (m.queue, m.priority, m.body, 0 if (m.not_before or 0) > now else 1, max(m.not_before or 0.0, now))
            for m in messages
        ]
        with self.db.transaction() as db:
            db.executemany(
                "INSERT INTO conveyor_messages (queue, priority, body, ready, visible_at) VALUES (?, ?, ?, ?, ?)",
                rows,
            )
        self._notify(m.queue for m in messages)

    def fetch(self, queues: Sequence[str], limit: int, timeout: float) -> list[Delivery]:
        signal = self._wake_signal(queues)
        return claim_or_wait(lambda: self._claim(queues, limit), signal, timeout, self.polling_interval)

    def _claim(self, queues: Sequence[str], limit: int) -> tuple[list[Delivery], float | None]:
        now = time.time()
        with self.db.transaction() as db:
            db.execute(
                "UPDATE conveyor_messages SET ready = 1, lease = NULL WHERE ready = 0 AND visible_at <= ?",
                (now,),
            )
            # Top `limit` of each queue by its index, merged: the best across all.
            candidates = heapq.nsmallest(
                limit,
                (
                    row
                    for queue in queues
                    for row in db.execute(
                        "SELECT priority, id FROM conveyor_messages"
                        " WHERE ready = 1 AND queue = ? ORDER BY priority, id LIMIT ?",
                        (queue, limit),
                    )
                ),
            )
            if not candidates:
                row = db.execute("SELECT MIN(visible_at) FROM conveyor_messages WHERE ready = 0").fetchone()
                return [], row[0]
            lease = uuid.uuid4().hex
            ids = [row_id for _, row_id in candidates]
            claimed = db.execute(
                "UPDATE conveyor_messages SET ready = 0, visible_at = ?, lease = ?,"
                " attempts = attempts + 1"
                f" WHERE id IN ({','.join('?' * len(ids))})"
                " RETURNING id, queue, priority, body, attempts",
                (now + self.lease_seconds, lease, *ids),
            ).fetchall()
        claimed.sort(key=lambda row: (row[2], row[0]))
        return [Delivery(queue, body, (row_id, lease), attempts) for row_id, queue, _, body, attempts in claimed], None

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        if not deliveries:
            return
        with self.db.transaction() as db:
            db.executemany(
                "DELETE FROM conveyor_messages WHERE id = ? AND lease = ?",
                [d.tag for d in deliveries],
            )

    def requeue(self, deliveries: Sequence[Delivery], delay: float = 0.0, *, redelivery: bool = False) -> None:
        if not deliveries:
            return
        ready, visible_at = (0, time.time() + delay) if delay > 0 else (1, time.time())
        uncount = 0 if redelivery else 1
        with self.db.transaction() as db:
            db.executemany(
                "UPDATE conveyor_messages SET ready = ?, lease = NULL, visible_at = ?, attempts = attempts - ?"
                " WHERE id = ? AND lease = ?",
                [(ready, visible_at, uncount, *d.tag) for d in deliveries],
            )
        self._notify(d.queue for d in deliveries)

    def renew(self, deliveries: Sequence[Delivery]) -> list[Delivery]:
        lost = []
        until = time.time() + self.lease_seconds
        with self.db.transaction() as db:
            for delivery in deliveries:
                cursor = db.execute(
                    "UPDATE conveyor_messages SET visible_at = ? WHERE id = ? AND lease = ? AND ready = 0",
                    (until, *delivery.tag),
                )
                if cursor.rowcount == 0:
                    lost.append(delivery)
        return lost

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        with self.db.transaction() as db:
            cursor = db.execute("DELETE FROM conveyor_messages WHERE id = ? AND lease = ?", delivery.tag)
            if cursor.rowcount:
                db.execute(
                    "INSERT INTO conveyor_dead_letters (queue, body, reason, failed_at) VALUES (?, ?, ?, ?)",
                    (delivery.queue, delivery.body, reason, time.time()),
                )

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        with self.db.translate():
            rows = (
                self.db.connection()
                .execute(
                    "SELECT queue, body, reason, failed_at FROM conveyor_dead_letters ORDER BY id DESC LIMIT ?",
                    (limit,),
                )
                .fetchall()
            )
        return [DeadLetter(*row) for row in rows]

    def requeue_dead_letters(self, limit: int) -> int:
        with self.db.transaction() as db:
            rows = db.execute(
                "SELECT id, queue, body FROM conveyor_dead_letters ORDER BY id LIMIT ?", (limit,)
            ).fetchall()
            db.executemany(
                "INSERT INTO conveyor_messages (queue, priority, body, ready, visible_at) VALUES (?, 0, ?, 1, ?)",
                [(queue, body, time.time()) for _, queue, body in rows],
            )
            db.executemany("DELETE FROM conveyor_dead_letters WHERE id = ?", [(row_id,) for row_id, _, _ in rows])
        if rows:
            self._notify(queue for _, queue, _ in rows)
        return len(rows)

    def purge(self, queues: Sequence[str]) -> int:
        if not queues:
            return 0
        with self.db.transaction() as db:
            cursor = db.execute(
                f"DELETE FROM conveyor_messages WHERE lease IS NULL AND queue IN ({','.join('?' * len(queues))})",
                tuple(queues),
            )
            return cursor.rowcount

    def queue_sizes(self, queues: Sequence[str] | None = None) -> dict[str, int]:
        with self.db.translate():
            rows = (
                self.db.connection().execute("SELECT queue, COUNT(*) FROM conveyor_messages GROUP BY queue").fetchall()
            )
        sizes = dict(rows)
        if queues is None:
            return sizes
        return {queue: sizes.get(queue, 0) for queue in queues}

    def oldest_ages(self, queues: Sequence[str]) -> dict[str, float]:
        # A ready message's visible_at is when it was published or came due.
        with self.db.translate():
            rows = (
                self.db.connection()
                .execute("SELECT queue, MIN(visible_at) FROM conveyor_messages WHERE ready = 1 GROUP BY queue")
                .fetchall()
            )
        now = time.time()
        return {queue: max(0.0, now - since) for queue, since in rows if queue in queues and since}

    def interrupt(self) -> None:
        with self._listeners_lock:
            wakeup.poke(list(self._listeners))

    def close(self) -> None:
        with self._listeners_lock:
            for listener in self._listeners:
                listener.close()
            self._listeners.clear()
        self._local = threading.local()
        for notifier in self._notifiers.values():
            notifier.close()
        self._notifiers.clear()
        self.db.close()
