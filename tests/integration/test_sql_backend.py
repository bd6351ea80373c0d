"""SQL result backends (S1.4) against real PostgreSQL and MariaDB, through SQLAlchemy and
through Django's ORM: a worker stores results there while its queue is elsewhere, as a
Celery deployment with a database backend does."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from conveyor import Celery, states
from conveyor.exceptions import BackendConnectionError
from tests.conftest import store_url
from tests.contract.test_worker_contract import running


class Boom(Exception):
    pass


@pytest.fixture(params=["postgresql", "mysql", "django-pg"])
def app(request: pytest.FixtureRequest, tmp_path) -> Iterator[Celery]:  # type: ignore[no-untyped-def]
    url, options = store_url(request.param, tmp_path)
    application = Celery("sqltests", broker=f"sqlite:///{tmp_path}/queue.db", result_backend=url)
    application.conf.result_backend_transport_options = {"polling_interval": 0.1, **options}

    @application.task(name="q.add")
    def add(x: int, y: int) -> int:
        return x + y

    @application.task(name="q.fail")
    def fail() -> None:
        raise Boom("in the database")

    @application.task(name="q.progress", bind=True)
    def progress(self: Any) -> str:
        self.update_state(state="PROGRESS", meta={"done": 1})
        return "done"

    yield application
    backend: Any = application.backend
    if hasattr(backend, "metadata"):  # SQLAlchemy: this test's own tables
        backend.metadata.drop_all(backend.engine)
    application.close()


def test_worker_stores_results_in_the_database(app: Celery) -> None:
    """S1.4: state, result, exception type and history round-trip through the SQL tables."""
    with running(app, "threads"):
        assert app.tasks["q.add"].delay(2, 3).get(timeout=20) == 5
        failed = app.tasks["q.fail"].delay()
        with pytest.raises(Boom, match="in the database"):
            failed.get(timeout=20)
        progress = app.tasks["q.progress"].delay()
        assert progress.get(timeout=20) == "done"
    assert failed.state == states.FAILURE
    history = [h["state"] for h in progress.scoreboard["history"]]
    assert history == [states.STARTED, "PROGRESS", states.SUCCESS]


def test_expired_results_are_cleaned_up(app: Celery) -> None:
    backend = app.backend
    backend.expires = 0.2
    backend.store("old", states.SUCCESS, 1)
    time.sleep(0.4)
    backend.expires = 3600
    backend.store("new", states.SUCCESS, 2)
    assert backend.get_meta("old")["status"] == states.PENDING  # expired reads as unknown at once
    assert backend.cleanup() == 1
    assert backend.get_meta("new")["result"] == 2 and backend.get_history("old") == []


def test_django_backend_names_what_is_missing(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from conveyor.backends import backend_from_url
    from conveyor.exceptions import ImproperlyConfigured

    assert type(backend_from_url("django-db")).__name__ == "DjangoBackend"
    store_url("django-pg", tmp_path)  # sets Django up
    with pytest.raises(ImproperlyConfigured, match="alias 'nowhere' is not in settings.DATABASES"):
        backend_from_url("django://nowhere").get_meta("x")


@pytest.mark.parametrize(
    "url", ["db+postgresql://postgres@127.0.0.1:1/test", "db+mysql://root@127.0.0.1:1/test"], ids=["pg", "mysql"]
)
def test_unreachable_database_is_a_clear_connection_error(url: str) -> None:
    app = Celery("down", broker="memory://", result_backend=url)
    with pytest.raises(BackendConnectionError, match="SQL backend"):
        _ = app.AsyncResult("some-id").state
    app.close()


def test_a_child_forked_by_another_thread_leaves_the_django_connection_alone(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Prefork forks from its supervisor thread: the child must not close the parent's connections."""
    import os
    import threading

    from conveyor.backends import backend_from_url

    url, _ = store_url("django-pg", tmp_path)
    backend = backend_from_url(url)
    backend.store("before", states.SUCCESS, 1)  # this thread's connection, now open

    def fork_and_reap() -> None:
        child = os.fork()
        if child == 0:
            os._exit(0)
        os.waitpid(child, 0)

    forker = threading.Thread(target=fork_and_reap)
    forker.start()
    forker.join()
    from conveyor.contrib.django.models import TaskResult

    # Straight through the ORM: the backend would reconnect on its own and hide a closed session.
    assert TaskResult.objects.using("pg").filter(task_id="before").count() == 1
