"""The SQLite store keeps task events in a file of its own beside the database: written at every
batch and disposable, they stay out of the tasks' WAL, and a damaged events file (an OS crash
can leave one, as it is written without fsync) is made anew rather than stopping the worker."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest

from conveyor.brokers import open_broker
from conveyor.exceptions import BrokerError


def test_task_events_are_kept_beside_the_database_not_in_it(tmp_path: Path) -> None:
    broker = open_broker(f"sqlite:///{tmp_path / 'store.db'}", {})
    broker.state.add_events([b'[["task-succeeded"]]'])
    broker.close()
    with sqlite3.connect(tmp_path / "store.db-events") as events:
        assert events.execute("SELECT event FROM conveyor_events").fetchall() == [(b'[["task-succeeded"]]',)]
        assert events.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    with sqlite3.connect(tmp_path / "store.db") as store:
        tables = {name for (name,) in store.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "conveyor_messages" in tables and "conveyor_events" not in tables


def test_a_damaged_events_file_is_made_anew(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "store.db-events").write_bytes(b"not a database " * 1000)
    with caplog.at_level(logging.WARNING, logger="conveyor.sqlitedb"):
        broker = open_broker(f"sqlite:///{tmp_path / 'store.db'}", {})
    broker.state.add_events([b"after"])
    assert broker.state.recent_events() == [b"after"]
    broker.close()
    assert "Recreating" in caplog.text and "store.db-events" in caplog.text


def test_an_events_file_that_cannot_be_opened_is_an_error_not_deleted(tmp_path: Path) -> None:
    (tmp_path / "store.db-events").mkdir()  # not damaged, just not a file: left alone
    with pytest.raises(BrokerError, match="store.db-events"):
        open_broker(f"sqlite:///{tmp_path / 'store.db'}", {})
    assert (tmp_path / "store.db-events").is_dir()
