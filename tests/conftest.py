"""Shared fixtures: apps on each embedded store, and the rule for service-backed tests.

Tests that need a server (Redis, RabbitMQ, PostgreSQL) read its URL from an
environment variable, skip with the reason when it is unreachable, and fail
instead when CONVEYOR_REQUIRE_SERVICES=1 (as CI sets).
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from conveyor import Celery


def require_service(env_var: str, default_url: str) -> str:
    """The service URL, after checking it answers on loopback; skip or fail if not."""
    url = os.environ.get(env_var, default_url)
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port
    try:
        with socket.create_connection((host, port or 0), timeout=1):
            pass
    except OSError as exc:
        reason = f"{env_var}={url} is unreachable: {exc}"
        if os.environ.get("CONVEYOR_REQUIRE_SERVICES") == "1":
            pytest.fail(f"{reason} (CONVEYOR_REQUIRE_SERVICES=1)")
        pytest.skip(reason)
    return url


def store_url(kind: str, tmp_path: os.PathLike[str]) -> str:
    if kind == "memory":
        return f"memory://{uuid.uuid4().hex}"
    return f"sqlite:///{os.path.join(tmp_path, 'conveyor.db')}"


STORES = ["memory", "sqlite"]


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, tmp_path: os.PathLike[str]) -> str:
    """A fresh URL for each embedded store kind."""
    return store_url(request.param, tmp_path)


@pytest.fixture
def app(store: str) -> Iterator[Celery]:
    """An app whose broker and backend are one embedded store (memory or SQLite)."""
    application = Celery("tests", broker=store, broker_transport_options={"polling_interval": 0.2})
    yield application
    application.close()
