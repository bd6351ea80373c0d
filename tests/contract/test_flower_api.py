"""Flower's REST API, path by path, with Flower's documented response shapes, against a real
worker on every broker."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from conveyor import Celery, states
from conveyor.dashboard import create_app
from tests.conftest import BROKERS, contract_app, store_url
from tests.contract.test_worker_contract import running

#: Every field of a task in Flower's `/api/tasks` and `/api/task/info`.
FLOWER_TASK_FIELDS = {
    "uuid", "name", "state", "received", "sent", "started", "rejected", "succeeded", "failed", "retried",
    "revoked", "args", "kwargs", "eta", "expires", "retries", "worker", "result", "exception", "timestamp",
    "runtime", "traceback", "exchange", "routing_key", "clock", "client", "root_id", "parent_id",
}  # fmt: skip


@pytest.fixture(params=BROKERS)
def app(request: pytest.FixtureRequest, tmp_path) -> Iterator[Celery]:  # type: ignore[no-untyped-def]
    application = contract_app("flower", store_url(request.param, tmp_path))
    application.conf.worker_send_task_events = True

    @application.task(name="f.add")
    def add(x: int, y: int) -> int:
        return x + y

    @application.task(name="f.fail")
    def fail() -> None:
        raise ValueError("no")

    @application.task(name="f.sleep")
    def sleep(seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    yield application
    application.close()


def client_for(app: Celery) -> TestClient:
    return TestClient(create_app(app, unauthenticated_api=True))


def eventually(check: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return value


def test_workers_list_each_worker_as_flower_does(app: Celery) -> None:
    client = client_for(app)
    with running(app, "threads"):
        workers = client.get("/api/workers").json()
        info = workers["w1@test"]
        assert {"stats", "active_queues", "registered", "scheduled", "active", "reserved", "revoked", "conf",
                "timestamp"} <= info.keys()  # fmt: skip
        assert info["stats"]["pool"]["max-concurrency"] == 2 and "f.add" in info["registered"]
        assert info["active_queues"][0]["name"] == "celery"
        assert client.get("/api/workers?status=true").json() == {"w1@test": True}
        assert list(client.get("/api/workers?workername=w1@test&refresh=1").json()) == ["w1@test"]
        missing = client.get("/api/workers?workername=nobody@test")
        assert missing.status_code == 404 and missing.text == "Unknown worker 'nobody@test'"


def test_worker_pool_and_queue_actions_answer_with_flowers_messages(app: Celery) -> None:
    client = client_for(app)
    with running(app, "threads") as worker:
        grow = client.post("/api/worker/pool/grow/w1@test?n=2")
        assert grow.json() == {"message": "Growing 'w1@test' worker's pool by 2"}
        assert worker.concurrency == 4
        shrink = client.post("/api/worker/pool/shrink/w1@test")
        assert shrink.json() == {"message": "Shrinking 'w1@test' worker's pool by 1"}
        assert worker.concurrency == 3
        autoscale = client.post("/api/worker/pool/autoscale/w1@test?min=1&max=3")
        assert autoscale.status_code == 403 and "Autoscale not enabled" in autoscale.text
        restart = client.post("/api/worker/pool/restart/w1@test")
        assert restart.status_code == 403
        added = client.post("/api/worker/queue/add-consumer/w1@test?queue=extra")
        assert added.json() == {"message": "add consumer extra"} and "extra" in worker.queues
        cancelled = client.post("/api/worker/queue/cancel-consumer/w1@test?queue=extra")
        assert cancelled.json() == {"message": "no longer consuming from 'extra'"}
        assert client.post("/api/worker/pool/grow/nobody@test").status_code == 404
        assert client.post("/api/worker/shutdown/w1@test").json() == {"message": "Shutting down!"}
        assert eventually(lambda: worker._done.is_set()), "the worker did not shut down"


def test_tasks_are_listed_filtered_and_described_from_events(app: Celery) -> None:
    client = client_for(app)
    with running(app, "threads"):
        ok = [app.tasks["f.add"].delay(i, i) for i in range(3)]
        bad = app.tasks["f.fail"].delay()
        for result in ok:
            result.get(timeout=10)
        with pytest.raises(ValueError):
            bad.get(timeout=10)
        assert eventually(lambda: len(client.get("/api/tasks").json()) == 4)
    tasks = client.get("/api/tasks").json()
    stamps = [task["timestamp"] for task in tasks.values()]
    assert stamps == sorted(stamps, reverse=True)  # the latest activity first
    record = tasks[ok[0].id]
    assert set(record) >= FLOWER_TASK_FIELDS
    assert record["state"] == states.SUCCESS and record["name"] == "f.add" and record["worker"] == "w1@test"
    assert record["received"] <= record["started"] <= record["succeeded"] and record["runtime"] >= 0
    assert record["result"] == "0" and record["routing_key"] == "celery"
    assert tasks[bad.id]["state"] == states.FAILURE and "ValueError" in tasks[bad.id]["exception"]
    assert list(client.get("/api/tasks?state=FAILURE").json()) == [bad.id]
    assert set(client.get("/api/tasks?taskname=f.add").json()) == {r.id for r in ok}
    assert len(client.get("/api/tasks?limit=2").json()) == 2
    assert len(client.get("/api/tasks?limit=2&offset=3").json()) == 1
    assert list(client.get("/api/tasks?workername=nobody@test").json()) == []
    assert list(client.get(f"/api/tasks?search={bad.id[:8]}").json()) == [bad.id]
    by_name = list(client.get("/api/tasks?sort_by=name").json().values())
    assert [t["name"] for t in by_name] == ["f.add"] * 3 + ["f.fail"]
    assert client.get("/api/tasks?received_start=2000-01-01 00:00").json().keys() == tasks.keys()
    assert client.get("/api/tasks?received_end=2000-01-01 00:00").json() == {}
    assert client.get("/api/tasks?received_end=yesterday").status_code == 400
    assert client.get("/api/task/types").json() == {"task-types": ["f.add", "f.fail"]}
    info = client.get(f"/api/task/info/{ok[1].id}").json()
    assert info["task-id"] == ok[1].id and info["state"] == states.SUCCESS and "uuid" not in info
    assert client.get("/api/task/info/never-seen").status_code == 404


def test_task_results_calls_and_revocation(app: Celery) -> None:
    client = client_for(app)
    with running(app, "threads"):
        applied = client.post("/api/task/apply/f.add", json={"args": [2, 3]}).json()
        assert applied["state"] == states.SUCCESS and applied["result"] == 5 and applied["task-id"]
        sent = client.post("/api/task/async-apply/f.add", json={"args": [1], "kwargs": {"y": 1}}).json()
        assert set(sent) == {"task-id", "state"}
        result = client.get(f"/api/task/result/{sent['task-id']}?timeout=10").json()
        assert result == {"task-id": sent["task-id"], "state": states.SUCCESS, "result": 2}
        by_name = client.post("/api/task/send-task/f.fail", json={}).json()
        failed = client.get(f"/api/task/result/{by_name['task-id']}?timeout=10").json()
        assert failed["state"] == states.FAILURE and "ValueError" in failed["traceback"]
        assert client.post("/api/task/apply/f.nope", json={}).status_code == 404
        assert client.post("/api/task/async-apply/f.add", json={"args": "1, 2"}).status_code == 400
        later = client.post("/api/task/async-apply/f.add", json={"args": [1, 1], "countdown": 60}).json()
        assert client.post(f"/api/task/revoke/{later['task-id']}").json() == {
            "message": f"Revoked '{later['task-id']}'"
        }
        assert client.get(f"/api/task/result/{later['task-id']}").json()["state"] == states.REVOKED
        aborted = client.post("/api/task/abort/some-task").json()
        assert aborted == {"message": "Aborted 'some-task'"}
        timeout = client.post("/api/task/timeout/f.sleep", data={"workername": "w1@test", "soft": "5", "hard": "10"})
        assert timeout.json() == {"message": "time limits set successfully"}
        assert app.tasks["f.sleep"].soft_time_limit == 5
        limited = client.post("/api/task/rate-limit/f.add", data={"workername": "w1@test", "ratelimit": "100/s"})
        assert limited.json() == {"message": "new rate limit set successfully"}
        assert client.post("/api/task/rate-limit/f.nope", data={"workername": "w1@test"}).status_code == 404


def test_queue_lengths_and_healthcheck(app: Celery) -> None:
    client = client_for(app)
    app.tasks["f.add"].apply_async((1, 1), queue="backlog")
    lengths = client.get("/api/queues/length").json()["active_queues"]
    assert {"name": "backlog", "messages": 1} in lengths and {"name": "celery", "messages": 0} in lengths
    health = client.get("/healthcheck")
    assert health.status_code == 200 and health.text == "OK"


def test_flowers_actions_need_authentication_by_default(app: Celery) -> None:
    client = TestClient(create_app(app))
    for path in ("/api/worker/shutdown/w1@test", "/api/task/revoke/x", "/api/task/async-apply/f.add"):
        assert client.post(path).status_code == 403, path
    assert client.get("/api/tasks").status_code == 200


def test_metrics_carry_flowers_names_beside_conveyors(app: Celery) -> None:
    with TestClient(create_app(app, sample_seconds=0.1)) as client, running(app, "threads"):
        for i in range(3):
            app.tasks["f.add"].delay(i, i).get(timeout=10)

        def metrics() -> str:
            text = client.get("/metrics").text
            return (
                text if 'flower_events_total{task="f.add",type="task-succeeded",worker="w1@test"} 3.0' in text else ""
            )

        text = eventually(metrics)
        assert text, client.get("/metrics").text
        assert 'flower_worker_online{worker="w1@test"} 1.0' in text
        assert 'flower_worker_number_of_currently_executing_tasks{worker="w1@test"}' in text
        assert 'flower_task_runtime_seconds_count{task="f.add",worker="w1@test"} 3.0' in text
        assert 'flower_task_prefetch_time_seconds{task="f.add",worker="w1@test"}' in text
        assert "conveyor_workers 1.0" in text


def test_a_long_task_shows_as_started_while_it_runs_and_a_short_one_costs_one_event(app: Celery) -> None:
    client = client_for(app)
    with running(app, "threads"):
        app.tasks["f.add"].delay(1, 1).get(timeout=10)

        def add_events() -> list[bytes]:
            return [e for e in app.state.recent_events(100) if b"f.add" in e]

        events = eventually(add_events)
        time.sleep(0.3)  # nothing more comes
        assert add_events() == events and len(events) == 1 and b'"task-succeeded"' in events[0]
        long = app.tasks["f.sleep"].delay(1.5)

        def started() -> dict[str, Any] | None:
            # (Until its events are written, the result backend tells it is STARTED: not when it came.)
            response = client.get(f"/api/task/info/{long.id}")
            info = response.json() if response.status_code == 200 else {}
            return info if info.get("state") == "STARTED" and info.get("received") else None

        info = eventually(started)
        assert info, "the running task was not shown as started"
        assert info["received"] <= info["started"] and info["worker"] == "w1@test"
        long.get(timeout=10)
    done = client.get(f"/api/task/info/{long.id}").json()
    assert done["state"] == states.SUCCESS and done["received"] <= done["started"] <= done["succeeded"]
    quick = client.get("/api/tasks?taskname=f.add").json()
    (record,) = quick.values()
    assert record["received"] <= record["started"] <= record["succeeded"] and record["args"] == "(1, 1)"


def test_task_sent_events_show_a_task_no_worker_took_yet(app: Celery) -> None:
    client = client_for(app)
    app.conf.task_send_sent_event = True
    waiting = app.tasks["f.add"].apply_async((4, 5), queue="nobody-consumes")
    task = client.get(f"/api/task/info/{waiting.id}").json()
    assert task["state"] == states.PENDING and task["name"] == "f.add" and task["args"] == "(4, 5)"
    assert task["sent"] and task["routing_key"] == "nobody-consumes"
    app.conf.task_send_sent_event = False
    quiet = app.tasks["f.add"].apply_async((1, 1), queue="nobody-consumes")
    assert client.get(f"/api/task/info/{quiet.id}").status_code == 404  # Celery's default: no task-sent


def test_events_are_on_by_default_and_a_setting_turns_them_off(app: Celery) -> None:
    client = client_for(app)
    app.conf.worker_send_task_events = type(app.conf)().worker_send_task_events  # the default
    with running(app, "threads"):
        shown = app.tasks["f.add"].delay(2, 2)
        assert shown.get(timeout=10) == 4
        assert eventually(lambda: client.get(f"/api/task/info/{shown.id}").json().get("received"))
    app.conf.worker_send_task_events = False
    with running(app, "threads", hostname="w2@test"):
        unseen = app.tasks["f.add"].delay(3, 3)
        assert unseen.get(timeout=10) == 6
        time.sleep(0.3)
    info = client.get(f"/api/task/info/{unseen.id}").json()  # from the result backend, not from events
    assert info["state"] == states.SUCCESS and info["received"] is None and info["worker"] == "w2@test"


def test_an_idle_worker_writes_the_events_of_calls_one_after_another_together(app: Celery) -> None:
    with running(app, "threads"):
        ids = [r.id for r in (app.tasks["f.add"].delay(i, i) for i in range(5)) if r.get(timeout=10) is not None]

        def records() -> list[bytes] | None:
            found = [r for r in app.state.recent_events(100) if b"f.add" in r]
            return found if all(any(i.encode() in r for r in found) for i in ids) else None

        written = eventually(records)
    assert written and len(written) < 5  # not one write per call
