"""A project's own test suite written against Celery's pytest fixtures (imports renamed); run by
test_pytest_plugin.py, not collected with the rest (its name does not start with test_)."""

import pytest

from conveyor.contrib.testing.worker import start_worker

pytest_plugins = ("conveyor.contrib.pytest",)


@pytest.fixture(scope="session")
def celery_config():
    return {"broker_url": "memory://", "result_backend": "cache+memory://", "task_serializer": "json"}


def test_a_task_defined_in_the_test_runs_on_the_worker(celery_app, celery_worker):
    @celery_app.task
    def mul(x, y):
        return x * y

    celery_worker.reload()
    assert mul.delay(4, 4).get(timeout=10) == 16


def test_start_worker_runs_a_worker_for_the_block(celery_app):
    @celery_app.task(bind=True)
    def who(self, x):
        return [x, bool(self.request.hostname)]

    with start_worker(celery_app, pool="threads", concurrency=2, perform_ping_check=True) as worker:
        assert who.delay(3).get(timeout=10) == [3, True]
        assert worker.hostname
