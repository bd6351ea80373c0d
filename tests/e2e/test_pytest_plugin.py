"""Celery's testing helpers: a project's suite using `celery_app`, `celery_worker` and
`start_worker` passes under pytest with `pytest_plugins = ("conveyor.contrib.pytest",)`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

PROJECT = Path(__file__).parent / "pytest_plugin_project"


def run_suite(
    directory: Path, suite: str = "project_suite.py", store: dict[str, Any] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(directory),
         "-c", "/dev/null", str(directory / suite)],
        capture_output=True, text=True, timeout=180, cwd=directory,
        env={**os.environ, "USAGE_STORE": json.dumps(store or {})},
    )  # fmt: skip


@pytest.fixture(params=["memory", "redis", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """Where the usage corpus's app keeps messages and results: Celery's test default (memory),
    a real Redis, the embedded SQLite (Conveyor only: Celery has no such broker)."""
    if request.param == "redis":
        url, options = request.getfixturevalue("redis_store")
        return {
            "broker_url": url, "result_backend": url, "broker_transport_options": options,
            "result_backend_transport_options": options,
        }  # fmt: skip
    if request.param == "sqlite":
        return {"broker_url": f"sqlite:///{tmp_path}/usage.db", "result_backend": f"sqlite:///{tmp_path}/usage.db"}
    return {}


def test_a_projects_suite_written_for_celerys_fixtures_passes(tmp_path: Path) -> None:
    done = run_suite(PROJECT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout


def test_the_same_suite_with_celerys_imports_passes_on_celery(tmp_path: Path) -> None:
    """The suite is a faithful use of Celery's helpers: renamed back, it passes on Celery 5."""
    source = (PROJECT / "project_suite.py").read_text()
    (tmp_path / "project_suite.py").write_text(source.replace("conveyor", "celery"))
    done = run_suite(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout


def renamed_back(source: str) -> str:
    """Conveyor's imports renamed to Celery's: kombu's names come from kombu, the rest from celery."""
    kombu = {"from conveyor import Exchange, Queue": "from kombu import Exchange, Queue",
             "from conveyor.serialization import register": "from kombu.serialization import register"}  # fmt: skip
    for ours, theirs in kombu.items():
        source = source.replace(ours, theirs)
    return source.replace("conveyor", "celery")


def test_celery_usage_from_projects_runs_on_conveyor(store: dict[str, Any]) -> None:
    """Canvas helpers (map, starmap, chunks), current_task, the app.task module, saved groups and
    result sets, the time helpers, a custom scheduler: as projects write them for Celery."""
    done = run_suite(PROJECT, "celery_usage.py", store)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "23 passed" in done.stdout


@pytest.mark.parametrize("store", ["memory", "redis"], indirect=True)
def test_the_same_usage_runs_on_celery(tmp_path: Path, store: dict[str, Any]) -> None:
    source = (PROJECT / "celery_usage.py").read_text()
    (tmp_path / "celery_usage.py").write_text(renamed_back(source))
    done = run_suite(tmp_path, "celery_usage.py", store)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "23 passed" in done.stdout
