"""The dashboard's pages and what only they ask for, in-process on the memory broker."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from conveyor import Celery, states
from conveyor.dashboard import create_app
from conveyor.dashboard.pages import known_arguments


@pytest.fixture
def app() -> Iterator[Celery]:
    application = Celery("pages", broker=f"memory://pages-{uuid.uuid4().hex}")

    @application.task(name="p.add")
    def add(x: int, y: int) -> int:
        return x + y

    yield application
    application.close()


def test_each_page_is_served_at_flowers_url_with_its_base(app: Celery) -> None:
    client = TestClient(create_app(app))
    for path, title in [("/", "Workers"), ("/workers", "Workers"), ("/worker/w1@host", "Worker"),
                        ("/tasks", "Tasks"), ("/task/abc", "Task"), ("/broker", "Broker"),
                        ("/overview", "Overview")]:  # fmt: skip
        page = client.get(path)
        assert page.status_code == 200 and f"<title>{title} · Conveyor</title>" in page.text, path
        assert '<base href="/">' in page.text
    assert client.get("/static/conveyor.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/static/conveyor.css").headers["content-type"].startswith("text/css")
    assert client.get("/static/../server.py").status_code == 404
    assert client.get("/static/nothing.js").status_code == 404


def test_a_url_prefix_serves_everything_under_it(app: Celery) -> None:
    client = TestClient(create_app(app, url_prefix="/ops/conveyor/"))
    page = client.get("/ops/conveyor/tasks")
    assert page.status_code == 200 and '<base href="/ops/conveyor/">' in page.text
    assert client.get("/ops/conveyor/api/dashboard/tasks").json()["total"] == 0
    assert client.get("/ops/conveyor/healthcheck").text == "OK"
    assert client.get("/tasks").status_code == 404


def test_the_task_list_pages_filters_and_counts(app: Celery) -> None:
    backend = app.backend
    for i in range(30):
        backend.store(f"t{i:02}", states.SUCCESS if i % 3 else states.FAILURE, i, history={"name": "p.add"})
    client = TestClient(create_app(app))
    with client:  # the lifespan reads the result backend at start
        page = client.get("/api/dashboard/tasks?limit=7&offset=7&sort_by=uuid").json()
        assert page["total"] == 30 and page["matching"] == 30 and page["names"] == ["p.add"]
        assert [t["uuid"] for t in page["tasks"]] == [f"t{i:02}" for i in range(7, 14)]
        failed = client.get("/api/dashboard/tasks?state=FAILURE&limit=500").json()
        assert failed["matching"] == 10 and {t["state"] for t in failed["tasks"]} == {states.FAILURE}
        assert client.get("/api/dashboard/tasks?search=t29").json()["matching"] == 1
        assert client.get("/api/dashboard/tasks?offset=x").status_code == 400


def test_the_event_stream_says_when_the_dashboard_took_a_sample(app: Celery) -> None:
    client = TestClient(create_app(app, sample_seconds=0.05))
    with client, client.stream("GET", "/api/stream") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        lines = stream.iter_lines()
        assert next(lines) == "retry: 3000"
        assert next(line for line in lines if line.startswith("event:")) == "event: sample"


def test_retry_sends_the_same_arguments_only_when_known_exactly() -> None:
    assert known_arguments({"args": [1, 2], "kwargs": {"z": 3}}, {}) == ([1, 2], {"z": 3})
    assert known_arguments({}, {"args": "(1, 'a')", "kwargs": "{'k': [1]}"}) == ([1, "a"], {"k": [1]})
    assert known_arguments({}, {"args": "(<object at 0x1>,)", "kwargs": "{}"}) is None
    assert known_arguments({}, {"args": "('aaaa...", "kwargs": "{}"}) is None  # shortened in the event
    assert known_arguments({}, {"args": "(1,)", "kwargs": "{1: 2}"}) is None


def test_retry_from_the_dashboard_sends_a_new_task_with_the_same_arguments(app: Celery) -> None:
    app.conf.result_extended = True
    app.backend.store("first", states.FAILURE, ValueError("x"), history={"name": "p.add"},
                      extended={"name": "p.add", "args": [2, 3], "kwargs": {}})  # fmt: skip
    client = TestClient(create_app(app, unauthenticated_api=True))
    response = client.post("/api/dashboard/retry/first")
    assert response.status_code == 200 and response.json()["retry-of"] == "first"
    sent = app.broker.fetch(["celery"], 1, 1.0)
    assert len(sent) == 1 and b"p.add" in sent[0].body
    assert client.post("/api/dashboard/retry/unknown").status_code == 404
    refused = TestClient(create_app(app)).post("/api/dashboard/retry/first")  # read-only by default
    assert refused.status_code == 403
