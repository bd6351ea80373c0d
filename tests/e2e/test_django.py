"""The Django layout of Celery's guide, as written there (imports aside): `proj/celery.py` with
`config_from_object('django.conf:settings', namespace='CELERY')` and `autodiscover_tasks()`,
`shared_task` in an installed app, results in Django's ORM, a worker through the CLI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
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
