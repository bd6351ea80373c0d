"""Celery's testing helpers: a project's suite using `celery_app`, `celery_worker` and
`start_worker` passes under pytest with `pytest_plugins = ("conveyor.contrib.pytest",)`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).parent / "pytest_plugin_project"


def run_suite(directory: Path, suite: str = "project_suite.py") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(directory),
         "-c", "/dev/null", str(directory / suite)],
        capture_output=True, text=True, timeout=120, cwd=directory,
    )  # fmt: skip


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


def test_celery_usage_from_projects_runs_on_conveyor() -> None:
    """Canvas helpers (map, starmap, chunks), current_task, the app.task module, saved groups and
    result sets, the time helpers: as projects write them for Celery."""
    done = run_suite(PROJECT, "celery_usage.py")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "8 passed" in done.stdout


def test_the_same_usage_runs_on_celery(tmp_path: Path) -> None:
    source = (PROJECT / "celery_usage.py").read_text()
    (tmp_path / "celery_usage.py").write_text(source.replace("conveyor", "celery"))
    done = run_suite(tmp_path, "celery_usage.py")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "8 passed" in done.stdout
