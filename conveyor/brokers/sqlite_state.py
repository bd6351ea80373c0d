"""The embedded SQLite state store, in the transport's database file (tables in
`conveyor.sqlitedb.SCHEMA`): each operation one short transaction. Task events, written at every
batch and disposable, live in a file of their own beside it (`conveyor.sqlitedb.EVENTS_SCHEMA`)."""

from __future__ import annotations

import time
from collections.abc import Sequence

from conveyor.brokers.state import EVENTS_KEPT, EventsTrim, StateStore
from conveyor.sqlitedb import Database


class SQLiteStateStore(StateStore):
    def __init__(self, db: Database, events: Database) -> None:
        self.db = db
        self.events = events
        self._trim = EventsTrim()

    def revoke(self, task_ids: Sequence[str], info: bytes, expires_at: float) -> None:
        with self.db.transaction() as db:
            db.execute("DELETE FROM conveyor_revoked WHERE expires_at <= ?", (time.time(),))
            db.executemany(
                "INSERT OR REPLACE INTO conveyor_revoked (task_id, info, expires_at) VALUES (?, ?, ?)",
                [(task_id, info, expires_at) for task_id in task_ids],
            )

    def revoked(self, task_ids: Sequence[str]) -> dict[str, bytes]:
        rows = self.db.select_in(
            "SELECT task_id, info FROM conveyor_revoked WHERE task_id IN ({values}) AND expires_at > ?",
            task_ids,
            time.time(),
        )
        return dict(rows)

    def kv_items(self, namespace: str) -> dict[str, bytes]:
        with self.db.translate():
            rows = (
                self.db.connection()
                .execute("SELECT key, value FROM conveyor_kv WHERE namespace = ?", (namespace,))
                .fetchall()
            )
        return dict(rows)

    def kv_get(self, namespace: str, key: str) -> bytes | None:
        with self.db.translate():
            row = (
                self.db.connection()
                .execute("SELECT value FROM conveyor_kv WHERE namespace = ? AND key = ?", (namespace, key))
                .fetchone()
            )
        return row[0] if row else None

    def kv_swap(self, namespace: str, key: str, expected: bytes | None, new: bytes | None) -> bool:
        with self.db.transaction() as db:
            row = db.execute(
                "SELECT value FROM conveyor_kv WHERE namespace = ? AND key = ?", (namespace, key)
            ).fetchone()
            if (row[0] if row else None) != expected:
                return False
            if new is None:
                db.execute("DELETE FROM conveyor_kv WHERE namespace = ? AND key = ?", (namespace, key))
            else:
                db.execute(
                    "INSERT OR REPLACE INTO conveyor_kv (namespace, key, value) VALUES (?, ?, ?)", (namespace, key, new)
                )
            return True

    def take_token(self, key: str, rate: float) -> float:
        with self.db.transaction() as db:
            now = time.time()
            row = db.execute("SELECT next_at FROM conveyor_buckets WHERE key = ?", (key,)).fetchone()
            due = max(now, row[0] if row else 0.0)
            if due > now:
                return due - now
            db.execute("INSERT OR REPLACE INTO conveyor_buckets (key, next_at) VALUES (?, ?)", (key, due + 1.0 / rate))
            return 0.0

    def add_events(self, events: Sequence[bytes]) -> None:
        if not events:
            return
        with self.events.transaction() as db:
            db.executemany("INSERT INTO conveyor_events (event) VALUES (?)", [(e,) for e in events])
            if self._trim.due():
                newest = db.execute("SELECT last_insert_rowid()").fetchone()[0]
                db.execute("DELETE FROM conveyor_events WHERE id <= ?", (newest - EVENTS_KEPT,))

    def recent_events(self, limit: int = 1000) -> list[bytes]:
        with self.events.translate():
            rows = (
                self.events.connection()
                .execute("SELECT event FROM conveyor_events ORDER BY id DESC LIMIT ?", (limit,))
                .fetchall()
            )
        return [row[0] for row in reversed(rows)]

    def register_worker(self, hostname: str, info: bytes, ttl: float) -> None:
        with self.db.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO conveyor_workers (hostname, expires_at, info) VALUES (?, ?, ?)",
                (hostname, time.time() + ttl, info),
            )

    def unregister_worker(self, hostname: str) -> None:
        with self.db.transaction() as db:
            db.execute("DELETE FROM conveyor_workers WHERE hostname = ?", (hostname,))

    def workers(self) -> dict[str, bytes]:
        with self.db.translate():
            rows = (
                self.db.connection()
                .execute("SELECT hostname, info FROM conveyor_workers WHERE expires_at > ?", (time.time(),))
                .fetchall()
            )
        return dict(rows)

    def close(self) -> None:
        self.db.close()
        self.events.close()
