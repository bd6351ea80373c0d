"""The Django layout of Celery's guide, as written there (imports aside): `proj/celery.py` with
`config_from_object('django.conf:settings', namespace='CELERY')` and `autodiscover_tasks()`,
`shared_task` in an installed app, results in Django's ORM, a worker through the CLI."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

from tests.conftest import SQL_DEFAULTS, require_service
from tests.processes import E2E

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "django"


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, e2e: E2E) -> Iterator[dict[str, str]]:
    """The project's database settings (environment): a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield {"EXAMPLE_DJANGO_DB": str(e2e.directory / "db.sqlite3")}
        return
    server = urlsplit(require_service(*SQL_DEFAULTS["postgresql"]))
    name = f"conveyor_django_{uuid.uuid4().hex[:12]}"
    admin = f"postgresql://{server.username or 'postgres'}@{server.hostname}:{server.port or 5432}/postgres"
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield {
            "EXAMPLE_POSTGRES": name, "EXAMPLE_POSTGRES_USER": server.username or "postgres",
            "EXAMPLE_POSTGRES_HOST": server.hostname or "127.0.0.1", "EXAMPLE_POSTGRES_PORT": str(server.port or 5432),
        }  # fmt: skip
    finally:
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_a_django_project_runs_its_shared_tasks_through_autodiscovery(e2e: E2E, database: dict[str, str]) -> None:
    """`manage.py migrate` creates the result tables, a worker runs the project's tasks, and a
    `manage.py shell` beside it sends them and reads their results through the ORM backend."""
    project = e2e.directory / "site"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("*.sqlite3", "*.db", "__pycache__"))
    settings = {**database, "EXAMPLE_BROKER_URL": f"sqlite:///{project / 'queue.db'}"}
    env = {**os.environ, **settings}
    migrate = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput"], cwd=project, env=env, capture_output=True, text=True
    )
    assert migrate.returncode == 0, migrate.stderr
    e2e.directory = project  # the worker runs in the project's directory, as `conveyor -A proj worker` would
    os.environ.update(settings)
    try:
        worker = e2e.start_worker("-P", "threads", "-c", "2", app="proj")
        produce = subprocess.run(
            [sys.executable, "manage.py", "shell", "-v", "0", "-c", PRODUCER],
            cwd=project, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        for name in settings:
            os.environ.pop(name, None)
    assert produce.returncode == 0, produce.stderr + worker.log
    assert produce.stdout.split() == ["5", "polls.tasks.count_users", "0", "SUCCESS"]
    assert "polls.tasks.add" in worker.log
    if "EXAMPLE_POSTGRES" in database:  # the results are rows of the project's PostgreSQL database
        stored = subprocess.run(
            [sys.executable, "manage.py", "shell", "-v", "0", "-c", STORED],
            cwd=project, env=env, capture_output=True, text=True,
        )  # fmt: skip
        assert stored.returncode == 0, stored.stderr
        assert stored.stdout.split() == ["postgresql", "2"]


STORED = """
from django.db import connection
from conveyor.contrib.django.models import TaskResult
print(connection.vendor, TaskResult.objects.filter(state="SUCCESS").count())
"""


PRODUCER = """
import django, os
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proj.settings")
django.setup()
from polls.tasks import add, count_users
print(add.delay(2, 3).get(timeout=20))
counted = count_users.delay()
value = counted.get(timeout=20)
print(value["task"], value["users"], counted.state)
"""


def test_the_same_project_renamed_runs_on_celery(
    e2e: E2E, database: dict[str, str], redis_store: tuple[str, dict[str, str]]
) -> None:
    """The layout is a faithful use of Celery's guide: with `conveyor` renamed to `celery` (and the
    results app Celery's django-db backend needs, django-celery-results, for Conveyor's), the same
    project runs on Celery 5, on Redis (Celery has no SQLite broker)."""
    project = e2e.directory / "site"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("*.sqlite3", "*.db", "__pycache__"))
    for path in project.rglob("*.py"):
        text = path.read_text().replace('"conveyor.contrib.django"', '"django_celery_results"')
        path.write_text(text.replace("conveyor", "celery"))
    url, options = redis_store
    env = {
        **os.environ, **database, "EXAMPLE_BROKER_URL": url, "EXAMPLE_TRANSPORT_OPTIONS": json.dumps(options),
    }  # fmt: skip
    migrate = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput"], cwd=project, env=env, capture_output=True, text=True
    )
    assert migrate.returncode == 0, migrate.stderr
    log = project / "worker.log"
    with open(log, "w") as output:
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "proj", "worker", "-P", "threads", "-c", "2", "-l", "info"],
            cwd=project, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while " ready." not in log.read_text():
            assert time.monotonic() < deadline and worker.poll() is None, log.read_text()
            time.sleep(0.1)
        produce = subprocess.run(
            [sys.executable, "manage.py", "shell", "-v", "0", "-c", PRODUCER],
            cwd=project, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(20)
    assert produce.returncode == 0, produce.stderr + log.read_text()
    assert produce.stdout.split() == ["5", "polls.tasks.count_users", "0", "SUCCESS"]
