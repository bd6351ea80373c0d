"""The embedded SQLite store that the SQLite broker and result backend share.

One database file (WAL mode) serves many producer and worker processes on one
host. Each thread gets its own connection (and a forked child opens new ones);
writes run in `BEGIN IMMEDIATE` transactions so two consumers never claim the
same row.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

from conveyor.exceptions import ConveyorError, ImproperlyConfigured

logger = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS conveyor_messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    priority INTEGER NOT NULL,
    body BLOB NOT NULL,
    ready INTEGER NOT NULL,       -- 1: deliverable now; 0: delayed or leased until visible_at
    visible_at REAL NOT NULL,
    lease TEXT,                   -- token of the consumer holding it
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS conveyor_messages_ready
    ON conveyor_messages (queue, priority, id) WHERE ready = 1;
CREATE INDEX IF NOT EXISTS conveyor_messages_waiting
    ON conveyor_messages (visible_at) WHERE ready = 0;
CREATE TABLE IF NOT EXISTS conveyor_dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    body BLOB NOT NULL,
    reason TEXT NOT NULL,
    failed_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS conveyor_workers (
    hostname TEXT PRIMARY KEY,
    expires_at REAL NOT NULL,
    info BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS conveyor_revoked (
    task_id TEXT PRIMARY KEY,
    info BLOB NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS conveyor_buckets (
    key TEXT PRIMARY KEY,
    next_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS conveyor_kv (
    namespace TEXT NOT NULL,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (namespace, key)
);
CREATE TABLE IF NOT EXISTS conveyor_results (
    task_id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    meta BLOB NOT NULL,
    expires_at REAL
);
CREATE INDEX IF NOT EXISTS conveyor_results_expiry
    ON conveyor_results (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS conveyor_history (
    task_id TEXT NOT NULL,
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    entry BLOB NOT NULL
);
-- Unique: a batch written again after a failure does not record its history twice.
CREATE UNIQUE INDEX IF NOT EXISTS conveyor_history_task ON conveyor_history (task_id, entry);
"""

#: The task events' file beside the store (`conveyor.db-events`): monitoring data, written at
#: every batch, kept out of the store's WAL so that its checkpoints stay the tasks' own.
EVENTS_SCHEMA = """
CREATE TABLE IF NOT EXISTS conveyor_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    event BLOB NOT NULL
);
"""

DEFAULT_URL = "sqlite:///conveyor.db"


def path_from_url(url: str) -> str:
    """`sqlite:///relative.db` or `sqlite:////absolute/path.db` to a file path."""
    parts = urlsplit(url)
    if parts.scheme != "sqlite" or parts.netloc:
        raise ImproperlyConfigured(
            f"a SQLite URL looks like sqlite:///conveyor.db or sqlite:////abs/path.db, not {url!r}"
        )
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    if not path or path == ":memory:":
        raise ImproperlyConfigured(f"{url!r} names no file: the SQLite store must be a file that processes share")
    return path


class Database:
    """Per-thread connections to one SQLite file, with the schema in place.

    A database that is not `durable` skips the fsyncs (`synchronous=OFF`): a commit still
    survives a process crash, but an OS crash may lose the latest commits or damage the file.
    """

    def __init__(self, path: str, error: type[ConveyorError], schema: str = SCHEMA, *, durable: bool = True) -> None:
        self.path = os.path.abspath(path)
        self.error = error
        self.durable = durable
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        directory = os.path.dirname(self.path)
        if directory and not os.path.isdir(directory):
            raise ImproperlyConfigured(f"the directory of the SQLite store does not exist: {directory}")
        with self.translate():
            connection = self.connection()
            connection.executescript(schema)

    def connection(self) -> sqlite3.Connection:
        local = self._local
        if getattr(local, "pid", None) != os.getpid():
            # A forked child must never reuse its parent's connection.
            local.connection = self._connect()
            local.pid = os.getpid()
            with self._connections_lock:
                self._connections.append(local.connection)
        connection: sqlite3.Connection = local.connection
        return connection

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, timeout=60.0, isolation_level=None, check_same_thread=False)
        connection.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a commit survives a process crash, not an OS crash; OFF also
        # skips the checkpoints' fsyncs, and an OS crash may damage the file.
        connection.execute("PRAGMA synchronous=NORMAL" if self.durable else "PRAGMA synchronous=OFF")
        return connection

    @contextlib.contextmanager
    def translate(self) -> Iterator[None]:
        """Turn sqlite3 errors into this store's Conveyor error."""
        try:
            yield
        except sqlite3.Error as exc:
            raise self.error(f"SQLite store {self.path}: {exc}") from exc

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (BEGIN IMMEDIATE), committed on success."""
        with self.translate():
            connection = self.connection()
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")

    def select_in(self, sql: str, values: Sequence[Any], *params: Any) -> list[Any]:
        """Rows of a SELECT whose `{values}` placeholder stands for `IN (?, ?, ...)` over `values`."""
        if not values:
            return []
        with self.translate():
            query = sql.format(values=",".join("?" * len(values)))
            return self.connection().execute(query, (*values, *params)).fetchall()

    def close(self) -> None:
        """Close every thread's connection (each reopens on next use)."""
        with self._connections_lock:
            for connection in self._connections:
                connection.close()
            self._connections.clear()
        self._local = threading.local()


def open_disposable(path: str, error: type[ConveyorError], schema: str) -> Database:
    """A database of data that may be lost (not `durable`); a damaged file, which an OS crash
    can leave, is deleted and made anew."""
    try:
        return Database(path, error, schema, durable=False)
    except error as exc:
        cause = exc.__cause__
        if not isinstance(cause, sqlite3.Error) or cause.sqlite_errorname not in ("SQLITE_CORRUPT", "SQLITE_NOTADB"):
            raise
        logger.warning("Recreating %s, which is damaged: %s", path, cause)
        for leftover in (path, path + "-wal", path + "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(leftover)
        return Database(path, error, schema, durable=False)
