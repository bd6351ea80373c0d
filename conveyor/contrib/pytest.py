"""Celery's pytest fixtures, for projects' own test suites: `pytest_plugins = ("conveyor.contrib.pytest",)`.

`celery_app` is an app on an in-memory broker and result store of its own (override
`celery_config`, `celery_parameters`, `celery_includes`); `celery_worker` runs a real worker for it
in a thread (`celery_worker_pool`, `celery_worker_parameters`).
"""

from __future__ import annotations

import importlib
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pytest

from conveyor.app import Conveyor
from conveyor.contrib.testing.worker import TestWorker, start_worker

#: What Celery's test configuration names for its in-memory result stores; here the app's own
#: in-memory store serves results.
_MEMORY_BACKENDS = ("cache+memory://", "cache+memory", "rpc", "rpc://", "memory://")


@pytest.fixture(scope="session")
def celery_config() -> Mapping[str, Any]:
    """Settings of the test app (override this fixture to change them)."""
    return {}


@pytest.fixture(scope="session")
def celery_parameters() -> Mapping[str, Any]:
    """Keyword arguments of the test app's constructor."""
    return {}


@pytest.fixture(scope="session")
def celery_includes() -> Sequence[str]:
    """Modules imported once the test app exists (where its tasks are defined)."""
    return ()


@pytest.fixture(scope="session")
def celery_worker_pool() -> str:
    return "solo"


@pytest.fixture(scope="session")
def celery_worker_parameters() -> Mapping[str, Any]:
    """Keyword arguments of `start_worker` for `celery_worker`."""
    return {}


def test_app(config: Mapping[str, Any], parameters: Mapping[str, Any], includes: Sequence[str]) -> Conveyor:
    """An app for one test: its own in-memory broker and results unless `config` names others."""
    settings = dict(config)
    own = f"memory://test-{uuid.uuid4().hex}"
    if settings.get("broker_url") in (None, "memory://"):
        settings["broker_url"] = own
    if settings.get("result_backend") in _MEMORY_BACKENDS:
        settings.pop("result_backend")  # results beside the in-memory queues
    app = Conveyor("celery.tests", **parameters)
    app.conf.update(settings)
    for module in includes:
        importlib.import_module(module)
    return app


test_app.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


@pytest.fixture
def celery_app(
    celery_config: Mapping[str, Any], celery_parameters: Mapping[str, Any], celery_includes: Sequence[str]
) -> Iterator[Conveyor]:
    app = test_app(celery_config, celery_parameters, celery_includes)
    yield app
    app.close()


@pytest.fixture
def celery_worker(
    celery_app: Conveyor, celery_worker_pool: str, celery_worker_parameters: Mapping[str, Any]
) -> Iterator[TestWorker]:
    with start_worker(celery_app, pool=celery_worker_pool, **celery_worker_parameters) as worker:
        yield worker
