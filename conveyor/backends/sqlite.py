"""The embedded SQLite result backend: the default, beside the SQLite broker.

Meta and history live in the same file as the broker's queues (tables
`conveyor_results` and `conveyor_history`). Callers waiting in `get()` sleep
on a local wake-up socket that every write signals (`conveyor.wakeup`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from conveyor import wakeup
from conveyor.backends.base import ResultBackend, StateUpdate, StoredTask, Waiter
from conveyor.exceptions import BackendError
from conveyor.sqlitedb import Database, path_from_url

#: Longest sleep of a waiting caller between checks, should a signal be lost.
DEFAULT_POLLING_INTERVAL = 1.0


class _SocketWaiter(Waiter):
    def __init__(self, directory: str, interval: float) -> None:
        super().__init__(interval)
        self.listener = wakeup.Listener(directory)

    def wait(self, timeout: float) -> None:
        self.listener.wait(min(timeout, self.interval))

    def close(self) -> None:
        self.listener.close()


class SQLiteBackend(ResultBackend):
    def __init__(self, url: str, options: Any = None, **kwargs: Any) -> None:
        super().__init__(url, options, **kwargs)
        self.db = Database(path_from_url(url), BackendError)
        self._wake_dir = wakeup.channel_directory(self.db.path, "results")
        self._notifier = wakeup.Notifier(self._wake_dir)

    def write(self, updates: Sequence[StateUpdate]) -> None:
        if not updates:
            return
        with self.db.transaction() as db:
            db.executemany(
                "INSERT INTO conveyor_results (task_id, state, meta, expires_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (task_id) DO UPDATE SET state = excluded.state,"
                " meta = excluded.meta, expires_at = excluded.expires_at"
                " WHERE conveyor_results.state != 'SUCCESS'",
                [(u.task_id, u.state, u.meta, u.expires_at) for u in updates],
            )
            db.executemany(
                "INSERT OR IGNORE INTO conveyor_history (task_id, entry) VALUES (?, ?)",
                [(u.task_id, entry) for u in updates for entry in u.history],
            )
        self._notifier.notify()

    def read(self, task_ids: Sequence[str]) -> dict[str, bytes]:
        rows = self.db.select_in(
            "SELECT task_id, meta FROM conveyor_results"
            " WHERE task_id IN ({values}) AND (expires_at IS NULL OR expires_at > ?)",
            task_ids,
            time.time(),
        )
        return dict(rows)

    def read_history(self, task_id: str) -> list[bytes]:
        with self.db.translate():
            rows = (
                self.db.connection()
                .execute("SELECT entry FROM conveyor_history WHERE task_id = ? ORDER BY seq", (task_id,))
                .fetchall()
            )
        return [row[0] for row in rows]

    def recent(self, limit: int) -> list[StoredTask]:
        # A task's expiry is when it was last written plus result_expires: the latest first.
        with self.db.translate():
            rows = (
                self.db.connection()
                .execute(
                    "SELECT task_id, meta, (SELECT entry FROM conveyor_history h WHERE h.task_id = r.task_id"
                    " ORDER BY seq DESC LIMIT 1) FROM conveyor_results r WHERE expires_at IS NULL OR expires_at > ?"
                    " ORDER BY expires_at DESC LIMIT ?",
                    (time.time(), limit),
                )
                .fetchall()
            )
        return [StoredTask(*row) for row in rows]

    def delete(self, task_ids: Sequence[str]) -> None:
        with self.db.transaction() as db:
            db.executemany("DELETE FROM conveyor_results WHERE task_id = ?", [(t,) for t in task_ids])
            db.executemany("DELETE FROM conveyor_history WHERE task_id = ?", [(t,) for t in task_ids])

    def waiter(self, task_id: str) -> Waiter:
        interval = float(self.options.get("polling_interval", DEFAULT_POLLING_INTERVAL))
        return _SocketWaiter(self._wake_dir, interval)

    def cleanup(self) -> int:
        with self.db.transaction() as db:
            now = time.time()
            db.execute(
                "DELETE FROM conveyor_history WHERE task_id IN (SELECT task_id FROM conveyor_results"
                " WHERE expires_at IS NOT NULL AND expires_at <= ?)",
                (now,),
            )
            cursor = db.execute("DELETE FROM conveyor_results WHERE expires_at IS NOT NULL AND expires_at <= ?", (now,))
            return cursor.rowcount

    def close(self) -> None:
        self._notifier.close()
        self.db.close()
