"""The ResultBackend contract (S1.4, S6): every backend passes the same suite."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from conveyor import states
from conveyor.backends import ResultBackend, backend_from_url
from conveyor.backends.base import coalesce
from conveyor.exceptions import TimeoutError
from tests.conftest import BACKENDS, store_url


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path) -> Iterator[ResultBackend]:  # type: ignore[no-untyped-def]
    url, options = store_url(request.param, tmp_path)
    instance = backend_from_url(url, {"polling_interval": 30, **options})
    yield instance
    metadata = getattr(instance, "metadata", None)
    if metadata is not None:  # a SQL backend's tables, made for this test alone
        metadata.drop_all(instance.engine)  # type: ignore[attr-defined]
    instance.close()


def test_unknown_task_is_pending(backend: ResultBackend) -> None:
    assert backend.get_meta("nope")["status"] == states.PENDING


def test_store_and_read(backend: ResultBackend) -> None:
    backend.store("t1", states.STARTED, {"pid": 1})
    assert backend.get_meta("t1")["status"] == states.STARTED
    backend.store("t1", states.SUCCESS, [1, 2])
    meta = backend.get_meta("t1")
    assert meta["status"] == states.SUCCESS and meta["result"] == [1, 2] and meta["date_done"]


def test_success_is_never_overwritten(backend: ResultBackend) -> None:
    """A late duplicate (say a redelivered run) never replaces SUCCESS."""
    backend.store("t1", states.SUCCESS, 3)
    backend.store("t1", states.STARTED)
    backend.store("t1", states.FAILURE, ValueError("late"))
    assert backend.get_meta("t1")["result"] == 3
    assert [e["state"] for e in backend.get_history("t1")] == [states.SUCCESS, states.STARTED, states.FAILURE]


def test_history_is_in_order_with_details(backend: ResultBackend) -> None:
    backend.write(
        [
            backend.make_update("t1", states.STARTED, history={"worker": "w1"}),
            backend.make_update("t1", states.SUCCESS, 1, history={"worker": "w1", "runtime": 0.5}),
        ]
    )
    history = backend.get_history("t1")
    assert [h["state"] for h in history] == [states.STARTED, states.SUCCESS]
    assert history[1]["runtime"] == 0.5 and history[0]["timestamp"] <= history[1]["timestamp"]


def test_delete_forgets(backend: ResultBackend) -> None:
    backend.store("t1", states.SUCCESS, 1)
    backend.delete(["t1"])
    assert backend.get_meta("t1")["status"] == states.PENDING
    assert backend.get_history("t1") == []


def test_expired_results_are_gone(backend: ResultBackend) -> None:
    # A second of life: a loaded CI machine once took over 0.3 s between the write and the read.
    backend.expires = 1.0
    backend.store("t1", states.SUCCESS, 1)
    assert backend.get_meta("t1")["status"] == states.SUCCESS
    time.sleep(1.2)
    assert backend.get_meta("t1")["status"] == states.PENDING
    backend.cleanup()  # Redis expires keys itself; the SQL and memory stores delete here
    assert backend.get_history("t1") == []


def test_wait_for_is_woken_by_the_write(backend: ResultBackend) -> None:
    """get() waits without polling: the waiter wakes on the write (polling is set to 30 s).
    A backend that cannot be notified (MySQL, SQLite through SQLAlchemy) sees it at its next poll."""
    if not backend.wakes_waiters:
        backend.options["polling_interval"] = 0.2
    writer = threading.Timer(0.3, backend.store, args=("t1", states.SUCCESS, 42))
    writer.start()
    started = time.monotonic()
    assert backend.wait_for("t1", timeout=20)["result"] == 42
    assert time.monotonic() - started < 10
    writer.join()  # the waiter can wake before the writer has its reply: close the backend after


def test_wait_for_times_out(backend: ResultBackend) -> None:
    with pytest.raises(TimeoutError):
        backend.wait_for("never", timeout=0.3)


def test_coalesced_updates_keep_every_history_entry_and_success(backend: ResultBackend) -> None:
    """A batch's STARTED and result for one task are stored as one; a SUCCESS still wins."""
    from conveyor.backends.base import coalesce

    batch = coalesce(
        [
            backend.make_update("t1", states.STARTED),
            backend.make_update("t2", states.STARTED),
            backend.make_update("t1", states.SUCCESS, 1),
            backend.make_update("t1", states.FAILURE, ValueError("late duplicate")),
        ]
    )
    assert [u.task_id for u in batch] == ["t1", "t2"]
    backend.write(batch)
    assert backend.get_meta("t1")["result"] == 1
    assert [h["state"] for h in backend.get_history("t1")] == [states.STARTED, states.SUCCESS, states.FAILURE]
    assert backend.get_meta("t2")["status"] == states.STARTED


def test_a_retried_write_records_history_once(backend: ResultBackend) -> None:
    """A batch written again (its first reply was lost) leaves the history as written once."""
    started = backend.make_update("t1", states.STARTED)
    success = backend.make_update("t1", states.SUCCESS, 1)
    backend.write([started])
    backend.write([started])
    backend.write(coalesce([started, success]))
    assert [h["state"] for h in backend.get_history("t1")] == [states.STARTED, states.SUCCESS]


def test_recent_lists_the_latest_written_tasks_first_with_their_last_history_entry(backend: ResultBackend) -> None:
    now = time.time()
    for age, task_id in ((30, "old"), (20, "middle"), (10, "new")):
        backend.write([backend.make_update(task_id, states.STARTED, history={"worker": "w1"}, now=now - age - 1)])
        backend.write([backend.make_update(task_id, states.SUCCESS, age, history={"name": "t.x"}, now=now - age)])
    backend.expires = 1.0
    backend.write([backend.make_update("expired", states.SUCCESS, 0, now=now - 5)])
    time.sleep(0.01)  # Redis gives a result written past its expiry the shortest TTL, a millisecond

    listed = backend.recent(10)
    assert [task.task_id for task in listed] == ["new", "middle", "old"]
    assert backend.decode(listed[0].meta)["result"] == 10
    assert listed[0].last_history is not None and backend.decode(listed[0].last_history)["name"] == "t.x"
    assert [task.task_id for task in backend.recent(2)] == ["new", "middle"]
