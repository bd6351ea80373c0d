"""Celery's testing helpers: a project's suite using `celery_app`, `celery_worker` and
`start_worker` passes under pytest with `pytest_plugins = ("conveyor.contrib.pytest",)`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).parent / "pytest_plugin_project"


def run_suite(directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(directory),
         "-c", "/dev/null", str(directory / "project_suite.py")],
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
