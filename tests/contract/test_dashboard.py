"""The web dashboard (S8): its API, metrics and page over every broker, with a real worker."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from conveyor import Celery, states
from conveyor.brokers import Outgoing
from conveyor.dashboard import create_app
from conveyor.worker import heartbeat
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
    app.broker.publish([Outgoing("celery", b"{not json")])
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
    client = TestClient(create_app(app, unauthenticated_api=True))
    with running(app, "threads"):
        done = app.tasks["d.add"].delay(2, 3)
        assert done.get(timeout=10) == 5
        board = client.get(f"/api/tasks/{done.id}").json()
        assert board["state"] == states.SUCCESS and board["result"] == 5
        assert [h["state"] for h in board["history"]] == [states.STARTED, states.SUCCESS]
        waiting = app.tasks["d.add"].apply_async((1, 1), countdown=60)
        assert client.post(f"/api/tasks/{waiting.id}/revoke").json() == {"revoked": waiting.id, "terminate": False}
        assert app.state.revoked([waiting.id])
    assert client.get("/api/tasks/never-sent").json()["state"] == states.PENDING


def test_recent_tasks_come_from_worker_events(app: Celery) -> None:
    """S8: tasks with state, arguments, result, runtime, newest first (workers with -E)."""
    client = TestClient(create_app(app))
    assert client.get("/api/recent-tasks").json() == []
    app.conf.worker_send_task_events = True
    with running(app, "threads"):
        ok = app.tasks["d.add"].delay(2, 3)
        assert ok.get(timeout=10) == 5
        bad = app.tasks["d.add"].delay("x", None)
        with pytest.raises(TypeError):
            bad.get(timeout=10)
        deadline = time.monotonic() + 10
        while len(client.get("/api/recent-tasks").json()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    rows = {row["id"]: row for row in client.get("/api/recent-tasks").json()}
    assert rows[ok.id]["state"] == states.SUCCESS and rows[ok.id]["name"] == "d.add"
    assert rows[ok.id]["args"] == "(2, 3)" and rows[ok.id]["result"] == "5" and rows[ok.id]["runtime"] >= 0
    assert rows[ok.id]["hostname"] == "w1@test" and rows[ok.id]["received"]
    assert rows[bad.id]["state"] == states.FAILURE and "TypeError" in rows[bad.id]["exception"]
    assert client.get("/api/recent-tasks").json()[0]["id"] == bad.id  # newest first


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
    assert page.status_code == 200 and "<title>Workers · Conveyor</title>" in page.text
    assert client.get("/api/overview", auth=("admin", "s3cret")).status_code == 200


def test_rate_limits_set_and_cleared_through_the_api(app: Celery) -> None:
    """S8 actions: a rate limit set from the dashboard reaches every worker (kept by the broker)."""
    client = TestClient(create_app(app, unauthenticated_api=True))
    assert "often" in client.post("/api/rate-limits/d.add?rate=often").json()["error"]
    assert client.post("/api/rate-limits/d.add").status_code == 400
    assert client.post("/api/rate-limits/d.add?rate=10/m").json() == {"task": "d.add", "rate_limit": "10/m"}
    assert client.get("/api/rate-limits").json() == {"d.add": "10/m"} == app.control.rate_limits()
    with running(app, "threads"):
        overview = client.get("/api/overview").json()
    assert {"d.add", "d.sleep"} <= set(overview["tasks"]) and overview["rate_limits"] == {"d.add": "10/m"}
    assert client.delete("/api/rate-limits/d.add").json() == {"task": "d.add", "rate_limit": None}
    assert client.get("/api/rate-limits").json() == {}


def test_rates_over_time_count_the_tasks_done(app: Celery, monkeypatch: pytest.MonkeyPatch) -> None:
    """S8 rates over time: the sampled rates add up to the tasks the workers finished."""
    monkeypatch.setattr(heartbeat, "HEARTBEAT_SECONDS", 0.2)

    def done_after(before: dict[str, Any], samples: list[dict[str, Any]]) -> float:
        new = [s for s in samples if s["at"] > before["at"]]
        times = [before["at"]] + [s["at"] for s in new]
        return sum(s["rate"] * (at - earlier) for s, at, earlier in zip(new, times[1:], times))

    def samples_when(client: TestClient, ready: Callable[[list[dict[str, Any]]], bool]) -> list[dict[str, Any]]:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            samples = client.get("/api/rates").json()
            if ready(samples):
                return samples  # type: ignore[no-any-return]
            time.sleep(0.1)
        raise AssertionError(f"rates never got there: {samples}")

    with TestClient(create_app(app, sample_seconds=0.2)) as client, running(app, "threads"):
        before = samples_when(client, lambda s: bool(s) and s[-1]["workers"] == 1)[-1]
        results = [app.tasks["d.sleep"].delay(0.05) for _ in range(40)]
        for result in results:
            result.get(timeout=20)
        after = samples_when(client, lambda s: round(done_after(before, s)) >= 40)
        time.sleep(1)  # a few more samples: nothing counted twice
        after = client.get("/api/rates").json()
    assert round(done_after(before, after)) == 40
    new = [s for s in after if s["at"] > before["at"]]
    assert max(s["rate"] for s in new) > 0 and max(s["waiting"] for s in new) > 0
