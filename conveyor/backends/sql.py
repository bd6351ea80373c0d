"""SQL result backends through SQLAlchemy: PostgreSQL, MySQL/MariaDB and SQLite (S1.4).

URLs take Celery's `db+` prefix before any SQLAlchemy URL:

    db+postgresql://user:password@127.0.0.1/app      (psycopg 3 when no driver is named)
    db+mysql://root@127.0.0.1/app                     (PyMySQL when no driver is named)
    db+sqlite:////var/lib/app/results.db

Two tables, named with the transport option `table_prefix` (default
`conveyor_`): `<prefix>results` (task id, state, meta, expiry) and
`<prefix>history` (one row per history entry, in insertion order; a digest
column makes an entry written twice, after a lost reply, land once). They are
created on first use; `SQLBackend.metadata` holds them for migration tools.

A batch of updates is one transaction. "A late duplicate never overwrites a
SUCCESS" is part of the upsert itself, so concurrent writers need no lock.
Waiting callers on PostgreSQL LISTEN on a channel that every write NOTIFYs in
its transaction: `get()` does not poll. On the other databases they poll every
`polling_interval` seconds (default 0.5).
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

from conveyor.backends.base import ResultBackend, StateUpdate, StoredTask, Waiter, coalesce
from conveyor.exceptions import BackendConnectionError, BackendError, ImproperlyConfigured

logger = logging.getLogger("conveyor.backends")

#: The driver used when a URL names none: the maintained ones, not SQLAlchemy's historic defaults.
DEFAULT_DRIVERS = {"postgresql": "postgresql+psycopg", "mysql": "mysql+pymysql", "mariadb": "mariadb+pymysql"}

_BLOB = sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")


def engine_url(url: str) -> str:
    """The SQLAlchemy URL of a `db+...` result_backend URL (a default driver filled in)."""
    if not url.startswith("db+"):
        raise ImproperlyConfigured(f"SQL result_backend {url!r} must start with 'db+' (e.g. db+postgresql://...)")
    scheme, rest = url[3:].split("://", 1)
    return f"{DEFAULT_DRIVERS.get(scheme, scheme)}://{rest}"


class _ListenWaiter(Waiter):
    """A PostgreSQL connection LISTENing on the results channel (psycopg 3)."""

    def __init__(self, engine: sa.Engine, channel: str, interval: float) -> None:
        super().__init__(interval)
        from psycopg import sql

        self._raw = engine.raw_connection()
        connection = self._raw.driver_connection
        assert connection is not None
        connection.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        connection.commit()
        self._connection = connection

    def wait(self, timeout: float) -> None:
        import psycopg

        try:
            for _ in self._connection.notifies(timeout=max(0.0, min(timeout, self.interval)), stop_after=1):
                break
        except psycopg.Error as exc:
            raise BackendConnectionError(f"SQL backend wait: {exc}") from exc

    def close(self) -> None:
        try:
            self._connection.execute("UNLISTEN *")
            self._connection.commit()
        finally:
            self._raw.close()  # back to the pool


class SQLBackend(ResultBackend):
    """Results in SQL tables; waiting callers are woken on PostgreSQL (psycopg), poll elsewhere."""

    def __init__(self, url: str, options: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(url, options, **kwargs)
        self.engine = sa.create_engine(engine_url(url), pool_pre_ping=True)
        prefix = str(self.options.get("table_prefix", "conveyor_"))
        self.metadata = sa.MetaData()
        self.results = sa.Table(
            f"{prefix}results",
            self.metadata,
            sa.Column("task_id", sa.String(255), primary_key=True),
            sa.Column("state", sa.String(50), nullable=False),
            sa.Column("meta", _BLOB, nullable=False),
            sa.Column("expires_at", sa.Double, index=True),
        )
        self.history = sa.Table(
            f"{prefix}history",
            self.metadata,
            sa.Column("seq", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
            sa.Column("task_id", sa.String(255), nullable=False),
            sa.Column("digest", sa.String(40), nullable=False),
            sa.Column("entry", _BLOB, nullable=False),
            sa.UniqueConstraint("task_id", "digest", name=f"{prefix}history_once"),
        )
        self.channel = f"{prefix}results"
        dialect = self.engine.dialect
        self._listen = dialect.name == "postgresql" and dialect.driver == "psycopg"
        self.wakes_waiters = self._listen
        self._upsert_result, self._insert_history = self._statements(dialect.name)
        self._created = False

    def _statements(self, dialect: str) -> tuple[Any, Any]:
        """The dialect's upsert (never over a SUCCESS) and insert-unless-present statements."""
        results, history = self.results, self.history
        if dialect in ("postgresql", "sqlite"):
            insert: Any = importlib.import_module(f"sqlalchemy.dialects.{dialect}").insert
            upsert = insert(results)
            upsert = upsert.on_conflict_do_update(
                index_elements=[results.c.task_id],
                set_={"state": upsert.excluded.state, "meta": upsert.excluded.meta,
                      "expires_at": upsert.excluded.expires_at},
                where=results.c.state != "SUCCESS",
            )  # fmt: skip
            return upsert, insert(history).on_conflict_do_nothing(index_elements=["task_id", "digest"])
        if dialect in ("mysql", "mariadb"):
            from sqlalchemy.dialects.mysql import insert as mysql_insert

            upsert_mysql = mysql_insert(results)
            # A literal, not a parameter: PyMySQL's executemany fills in no parameters after VALUES.
            keep = results.c.state == sa.literal_column("'SUCCESS'")
            # MySQL assigns left to right: state last, so the others still see the old one.
            upsert_mysql = upsert_mysql.on_duplicate_key_update(
                [
                    ("meta", sa.func.if_(keep, results.c.meta, upsert_mysql.inserted.meta)),
                    ("expires_at", sa.func.if_(keep, results.c.expires_at, upsert_mysql.inserted.expires_at)),
                    ("state", sa.func.if_(keep, results.c.state, upsert_mysql.inserted.state)),
                ]
            )
            return upsert_mysql, mysql_insert(history).prefix_with("IGNORE")
        raise ImproperlyConfigured(f"result_backend {self.url!r}: no SQL backend for the {dialect!r} dialect")

    def _translate(self, where: str) -> _Translate:
        return _Translate(f"SQL backend {where}")

    def _ensure_tables(self) -> None:
        if self._created:
            return
        with self._translate("create tables"):
            try:
                self.metadata.create_all(self.engine)
            except sa.exc.DatabaseError:  # another process created them meanwhile ("already exists")
                self.metadata.create_all(self.engine)
        self._created = True

    # -- ResultBackend ---------------------------------------------------------------------
    def write(self, updates: Sequence[StateUpdate]) -> None:
        if not updates:
            return
        self._ensure_tables()
        merged = coalesce(updates)  # one row per task in a batch: an upsert may not touch a row twice
        rows = [{"task_id": u.task_id, "state": u.state, "meta": u.meta, "expires_at": u.expires_at} for u in merged]
        entries = [
            {"task_id": u.task_id, "digest": hashlib.sha1(entry).hexdigest(), "entry": entry}
            for u in merged
            for entry in u.history
        ]
        with self._translate("write"), self.engine.begin() as connection:
            connection.execute(self._upsert_result, rows)
            if entries:
                connection.execute(self._insert_history, entries)
            if self._listen:
                connection.execute(sa.select(sa.func.pg_notify(self.channel, "")))

    def read(self, task_ids: Sequence[str]) -> dict[str, bytes]:
        if not task_ids:
            return {}
        self._ensure_tables()
        results = self.results
        query = sa.select(results.c.task_id, results.c.meta).where(
            results.c.task_id.in_(task_ids), sa.or_(results.c.expires_at.is_(None), results.c.expires_at > time.time())
        )
        with self._translate("read"), self.engine.connect() as connection:
            return {task_id: bytes(meta) for task_id, meta in connection.execute(query)}

    def read_history(self, task_id: str) -> list[bytes]:
        self._ensure_tables()
        history = self.history
        query = sa.select(history.c.entry).where(history.c.task_id == task_id).order_by(history.c.seq)
        with self._translate("read_history"), self.engine.connect() as connection:
            return [bytes(entry) for (entry,) in connection.execute(query)]

    def recent(self, limit: int) -> list[StoredTask]:
        self._ensure_tables()
        results, history = self.results, self.history
        last_entry = (
            sa.select(history.c.entry).where(history.c.task_id == results.c.task_id)
            .order_by(history.c.seq.desc()).limit(1).scalar_subquery()
        )  # fmt: skip
        # A task's expiry is when it was last written plus result_expires: the latest first.
        query = (
            sa.select(results.c.task_id, results.c.meta, last_entry)
            .where(sa.or_(results.c.expires_at.is_(None), results.c.expires_at > time.time()))
            .order_by(results.c.expires_at.desc()).limit(limit)
        )  # fmt: skip
        with self._translate("recent"), self.engine.connect() as connection:
            return [
                StoredTask(task_id, bytes(meta), None if entry is None else bytes(entry))
                for task_id, meta, entry in connection.execute(query)
            ]

    def delete(self, task_ids: Sequence[str]) -> None:
        if not task_ids:
            return
        self._ensure_tables()
        with self._translate("delete"), self.engine.begin() as connection:
            connection.execute(sa.delete(self.results).where(self.results.c.task_id.in_(task_ids)))
            connection.execute(sa.delete(self.history).where(self.history.c.task_id.in_(task_ids)))

    def cleanup(self) -> int:
        self._ensure_tables()
        results, history = self.results, self.history
        expired = sa.select(results.c.task_id).where(results.c.expires_at <= time.time())
        with self._translate("cleanup"), self.engine.begin() as connection:
            task_ids = list(connection.scalars(expired))
            for start in range(0, len(task_ids), 1000):
                chunk = task_ids[start : start + 1000]
                connection.execute(sa.delete(history).where(history.c.task_id.in_(chunk)))
                connection.execute(sa.delete(results).where(results.c.task_id.in_(chunk)))
        return len(task_ids)

    def waiter(self, task_id: str) -> Waiter:
        if self._listen:
            interval = float(self.options.get("polling_interval", 5.0))
            with self._translate("listen"):
                return _ListenWaiter(self.engine, self.channel, interval)
        return Waiter(float(self.options.get("polling_interval", 0.5)))

    def close(self) -> None:
        self.engine.dispose()


class _Translate:
    """SQLAlchemy and driver errors as Conveyor's: lost connections as BackendConnectionError."""

    def __init__(self, where: str) -> None:
        self.where = where

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        lost = isinstance(exc, sa.exc.OperationalError) or (
            isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated
        )
        if lost:
            raise BackendConnectionError(f"{self.where}: {exc}") from exc
        if isinstance(exc, sa.exc.SQLAlchemyError):
            raise BackendError(f"{self.where}: {exc}") from exc
