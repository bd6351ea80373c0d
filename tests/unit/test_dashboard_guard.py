"""The dashboard is safe by default: read-only without credentials, no cross-origin actions,
passwords never shown, repeated failed logins slowed."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from conveyor import Celery
from conveyor.dashboard import create_app


@pytest.fixture
def app() -> Iterator[Celery]:
    application = Celery("guarded", broker=f"memory://guard-{uuid.uuid4().hex}")  # a store of its own
    yield application
    application.close()


def test_without_credentials_the_dashboard_reads_but_refuses_every_action(app: Celery) -> None:
    client = TestClient(create_app(app))
    assert client.get("/api/overview").status_code == 200
    for method, path in [
        ("POST", "/api/tasks/t1/revoke?terminate=1&signal=SIGKILL"),
        ("POST", "/api/rate-limits/t.add?rate=1/m"),
        ("DELETE", "/api/rate-limits/t.add"),
    ]:
        response = client.request(method, path)
        assert response.status_code == 403, path
        assert "read-only" in response.json()["error"]
    assert app.state.revoked(["t1"]) == {}
    assert app.control.rate_limits() == {}


def test_unauthenticated_actions_only_when_explicitly_allowed(app: Celery) -> None:
    client = TestClient(create_app(app, unauthenticated_api=True))
    assert client.post("/api/tasks/t1/revoke").status_code == 200
    assert app.state.revoked(["t1"])


def test_an_action_from_a_foreign_page_is_refused_even_with_credentials(app: Celery) -> None:
    client = TestClient(create_app(app, basic_auth="admin:s3cret"), base_url="http://dash.local:5555")
    foreign = client.post(
        "/api/tasks/t1/revoke?terminate=1&signal=SIGKILL",
        auth=("admin", "s3cret"),
        headers={"Origin": "http://evil.example"},
    )
    assert foreign.status_code == 403 and "cross-origin" in foreign.json()["error"]
    by_referer = client.post(
        "/api/tasks/t1/revoke", auth=("admin", "s3cret"), headers={"Referer": "http://evil.example/page"}
    )
    assert by_referer.status_code == 403
    assert app.state.revoked(["t1"]) == {}
    own = client.post("/api/tasks/t1/revoke", auth=("admin", "s3cret"), headers={"Origin": "http://dash.local:5555"})
    assert own.status_code == 200
    script = client.post("/api/tasks/t2/revoke", auth=("admin", "s3cret"))  # no Origin: curl, a script
    assert script.status_code == 200
    assert set(app.state.revoked(["t1", "t2"])) == {"t1", "t2"}


def test_the_broker_password_is_never_shown(app: Celery) -> None:
    app.conf.broker_url = "memory://:s3cret@guard-test"
    client = TestClient(create_app(app))
    overview = client.get("/api/overview")
    assert "s3cret" not in overview.text
    assert overview.json()["broker"] == "memory://:***@guard-test"


def test_repeated_failed_logins_are_answered_ever_more_slowly(app: Celery) -> None:
    client = TestClient(create_app(app, basic_auth="admin:s3cret"))
    waits = []
    for _ in range(5):
        started = time.monotonic()
        assert client.get("/api/overview", auth=("admin", "guess")).status_code == 401
        waits.append(time.monotonic() - started)
    assert waits[0] < 0.1 and waits[4] >= 0.8  # 0, 0.1, 0.2, 0.4, 0.8 s
    started = time.monotonic()
    assert client.get("/api/overview", auth=("admin", "s3cret")).status_code == 200
    assert client.get("/api/overview", auth=("admin", "s3cret")).status_code == 200
    assert time.monotonic() - started < 2.5  # the right password resets the count
