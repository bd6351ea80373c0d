"""The web dashboard (S8): its API, metrics and page over every broker, with a real worker."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from conveyor import Celery, states
from conveyor.dashboard import create_app
from tests.conftest import BROKERS, contract_app, store_url
from tests.contract.test_worker_contract import running


@pytest.fixture(params=BROKERS)
def app(request: pytest.FixtureRequest, tmp_path) -> Iterator[Celery]:  # type: ignore[no-untyped-def]
    application = contract_app("dash", store_url(request.param, tmp_path))

    @application.task(name="d.add")
    def add(x: int, y: int) -> int:
        return x + y

    @application.task(name="d.sleep")
    def sleep(seconds: float) -> None:
        time.sleep(seconds)

    yield application
    application.close()


def test_overview_shows_workers_queues_and_dead_letters(app: Celery) -> None:
    client = TestClient(create_app(app))
    app.tasks["d.add"].apply_async((1, 1), queue="later")
    app.broker.publish_one("celery", b"{not json")
    with running(app, "threads"):
        deadline = time.monotonic() + 10
        while not app.broker.dead_letters() and time.monotonic() < deadline:
            time.sleep(0.05)
        overview = client.get("/api/overview").json()
    assert [w["hostname"] for w in overview["workers"]] == ["w1@test"]
    assert overview["workers"][0]["pool"] == "threads"
    assert overview["queues"]["later"] == 1 and "celery" in overview["queues"]
    assert "undecodable" in overview["dead_letters"][0]["reason"]


def test_task_scoreboard_and_revoke(app: Celery) -> None:
    client = TestClient(create_app(app))
    with running(app, "threads"):
        done = app.tasks["d.add"].delay(2, 3)
        assert done.get(timeout=10) == 5
        board = client.get(f"/api/tasks/{done.id}").json()
        assert board["state"] == states.SUCCESS and board["result"] == 5
        assert [h["state"] for h in board["history"]] == [states.STARTED, states.SUCCESS]
        waiting = app.tasks["d.add"].apply_async((1, 1), countdown=60)
        assert client.post(f"/api/tasks/{waiting.id}/revoke").json() == {"revoked": waiting.id, "terminate": False}
        assert app.broker.revoked([waiting.id])
    assert client.get("/api/tasks/never-sent").json()["state"] == states.PENDING


def test_recent_tasks_come_from_worker_events(app: Celery) -> None:
    """S8: tasks with state, arguments, result, runtime, newest first (workers with -E)."""
    client = TestClient(create_app(app))
    assert client.get("/api/tasks").json() == []
    app.conf.worker_send_task_events = True
    with running(app, "threads"):
        ok = app.tasks["d.add"].delay(2, 3)
        assert ok.get(timeout=10) == 5
        bad = app.tasks["d.add"].delay("x", None)
        with pytest.raises(TypeError):
            bad.get(timeout=10)
        deadline = time.monotonic() + 10
        while len(client.get("/api/tasks").json()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    rows = {row["id"]: row for row in client.get("/api/tasks").json()}
    assert rows[ok.id]["state"] == states.SUCCESS and rows[ok.id]["name"] == "d.add"
    assert rows[ok.id]["args"] == "(2, 3)" and rows[ok.id]["result"] == "5" and rows[ok.id]["runtime"] >= 0
    assert rows[ok.id]["hostname"] == "w1@test" and rows[ok.id]["received"]
    assert rows[bad.id]["state"] == states.FAILURE and "TypeError" in rows[bad.id]["exception"]
    assert client.get("/api/tasks").json()[0]["id"] == bad.id  # newest first


def test_prometheus_metrics(app: Celery) -> None:
    client = TestClient(create_app(app))
    app.tasks["d.add"].apply_async((1, 1), queue="backlog")
    app.tasks["d.add"].apply_async((1, 1), queue="backlog")
    with running(app, "threads", queues=["other"]):
        text = client.get("/metrics").text
    assert 'conveyor_queue_messages{queue="backlog"} 2.0' in text
    assert "conveyor_workers 1.0" in text
    assert 'conveyor_worker_processed_tasks{worker="w1@test"}' in text


def test_page_and_basic_auth(app: Celery) -> None:
    client = TestClient(create_app(app, basic_auth="admin:s3cret"))
    refused = client.get("/")
    assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Basic")
    assert client.get("/api/overview", auth=("admin", "wrong")).status_code == 401
    assert client.get("/metrics").status_code == 401
    token = base64.b64encode(b"admin:s3cret").decode()
    page = client.get("/", headers={"Authorization": f"Basic {token}"})
    assert page.status_code == 200 and "<title>Conveyor</title>" in page.text
    assert client.get("/api/overview", auth=("admin", "s3cret")).status_code == 200
