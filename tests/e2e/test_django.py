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
from pathlib import Path

from tests.processes import E2E

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "django"


def test_a_django_project_runs_its_shared_tasks_through_autodiscovery(e2e: E2E) -> None:
    project = e2e.directory / "site"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("*.sqlite3", "*.db", "__pycache__"))
    env = {
        **os.environ,
        "EXAMPLE_DJANGO_DB": str(project / "db.sqlite3"),
        "EXAMPLE_BROKER_URL": f"sqlite:///{project / 'queue.db'}",
    }
    migrate = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput"], cwd=project, env=env, capture_output=True, text=True
    )
    assert migrate.returncode == 0, migrate.stderr
    e2e.directory = project  # the worker runs in the project's directory, as `conveyor -A proj worker` would
    os.environ.update({k: env[k] for k in ("EXAMPLE_DJANGO_DB", "EXAMPLE_BROKER_URL")})
    try:
        worker = e2e.start_worker("-P", "threads", "-c", "2", app="proj")
        produce = subprocess.run(
            [sys.executable, "-c", PRODUCER], cwd=project, env=env, capture_output=True, text=True, timeout=60
        )
    finally:
        for name in ("EXAMPLE_DJANGO_DB", "EXAMPLE_BROKER_URL"):
            os.environ.pop(name, None)
    assert produce.returncode == 0, produce.stderr + worker.log
    assert produce.stdout.split() == ["5", "polls.tasks.count_users", "0", "SUCCESS"]
    assert "polls.tasks.add" in worker.log


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


def test_the_same_project_renamed_runs_on_celery(e2e: E2E, redis_store: tuple[str, dict[str, str]]) -> None:
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
        **os.environ, "EXAMPLE_DJANGO_DB": str(project / "db.sqlite3"), "EXAMPLE_BROKER_URL": url,
        "EXAMPLE_TRANSPORT_OPTIONS": json.dumps(options),
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
            [sys.executable, "-c", PRODUCER], cwd=project, env=env, capture_output=True, text=True, timeout=60
        )
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(20)
    assert produce.returncode == 0, produce.stderr + log.read_text()
    assert produce.stdout.split() == ["5", "polls.tasks.count_users", "0", "SUCCESS"]
