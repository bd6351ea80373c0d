"""Deduplication (conveyor/dedup.py) over every embedded broker and Redis, with a real worker."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor import Celery, states
from conveyor.dedup import NAMESPACE
from tests.conftest import BROKERS, contract_app, store_url
from tests.contract.test_semantics import wait_for
from tests.contract.test_worker_contract import running
from tests.processes import wait_for_state


@pytest.fixture(params=BROKERS)
def app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Celery]:
    application = contract_app("dedup", store_url(request.param, tmp_path))

    @application.task(name="dd.add")
    def add(x: int, y: int) -> int:
        return x + y

    @application.task(name="dd.fail")
    def fail() -> None:
        raise RuntimeError("no")

    @application.task(name="dd.flaky", bind=True, max_retries=1)
    def flaky(self) -> int:  # type: ignore[no-untyped-def]
        if not self.request.retries:
            raise self.retry(countdown=1.0)
        return self.request.retries  # type: ignore[no-any-return]

    yield application
    application.close()


def queued(app: Celery) -> int:
    return app.broker.queue_sizes(["celery"])["celery"]


def test_a_pending_key_returns_the_first_task_and_sends_nothing(app: Celery) -> None:
    add = app.tasks["dd.add"]
    first = add.apply_async((1, 2), deduplication_id="sum:1:2")
    again = add.apply_async((1, 2), deduplication_id="sum:1:2")
    other = add.apply_async((1, 2), deduplication_id="sum:other")
    assert again.id == first.id != other.id
    assert queued(app) == 2
    with running(app, "threads"):
        assert again.get(timeout=10) == 3
        other.get(timeout=10)
        later = add.apply_async((1, 2), deduplication_id="sum:1:2")  # the first one ended: free again
        assert later.id != first.id and later.get(timeout=10) == 3
    assert app.state.kv_items(NAMESPACE) == {}  # every hold given back


def test_a_call_that_sends_nothing_leaves_the_key_free(app: Celery) -> None:
    add = app.tasks["dd.add"]
    with pytest.raises(TypeError, match="not JSON serializable"):  # nothing is sent
        add.apply_async((object(), 1), deduplication_id="unsent")
    assert app.state.kv_get(NAMESPACE, "unsent") is None
    with pytest.raises(TypeError, match="not JSON serializable"):  # the same for a throttle's hold
        add.apply_async((object(), 1), deduplication_id="unsent", deduplication_ttl=60)
    sent = add.apply_async((1, 1), deduplication_id="unsent")
    assert queued(app) == 1 and json.loads(app.state.kv_get(NAMESPACE, "unsent") or b"")["task_id"] == sent.id


def test_concurrent_callers_get_one_task(app: Celery) -> None:
    ids: list[str] = []

    def call() -> None:
        ids.append(app.tasks["dd.add"].apply_async((2, 2), deduplication_id="race").id)

    threads = [threading.Thread(target=call) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(ids)) == 1 and queued(app) == 1


def test_a_ttl_holds_the_key_after_the_task_ended(app: Celery) -> None:
    add = app.tasks["dd.add"]
    with running(app, "threads"):
        first = add.apply_async((1, 1), deduplication_id="throttled", deduplication_ttl=1.5)
        assert first.get(timeout=10) == 2
        assert add.apply_async((1, 1), deduplication_id="throttled", deduplication_ttl=1.5).id == first.id
        time.sleep(1.6)
        later = add.apply_async((1, 1), deduplication_id="throttled", deduplication_ttl=1.5)
        assert later.id != first.id and later.get(timeout=10) == 2


def test_failure_and_revocation_free_the_key_and_a_retry_keeps_it(app: Celery) -> None:
    fail, add, flaky = app.tasks["dd.fail"], app.tasks["dd.add"], app.tasks["dd.flaky"]
    revoked = add.apply_async((0, 0), deduplication_id="revoked")
    revoked.revoke()
    with running(app, "threads"):
        failed = fail.apply_async(deduplication_id="failing")
        with pytest.raises(RuntimeError):
            failed.get(timeout=10)
        assert fail.apply_async(deduplication_id="failing").id != failed.id

        retrying = flaky.apply_async(deduplication_id="flaky")
        wait_for_state(retrying, states.RETRY)
        assert flaky.apply_async(deduplication_id="flaky").id == retrying.id  # still pending
        assert retrying.get(timeout=10) == 1

        # The worker fetches it, ends it REVOKED and gives its key back.
        wait_for(lambda: app.state.kv_get(NAMESPACE, "revoked") is None)
        assert revoked.state == states.REVOKED
        assert add.apply_async((0, 0), deduplication_id="revoked").id != revoked.id
