"""The tutorial's flow through the real CLI on the embedded SQLite default (S1-S7)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

from tests.processes import E2E

TUTORIAL = Path(__file__).parents[2] / "examples" / "tutorial"

PRODUCER = """
from task import add, priority_high
result = add.delay(1, 2)
high = priority_high.delay("hello")
print(result.get(timeout=60))
print(high.get(timeout=60))
print(result.state, result.successful(), result.scoreboard["worker"])
"""


def test_tutorial_runs_with_only_its_imports_changed(e2e: E2E) -> None:
    """S5.1/S5.2/S7: `conveyor -A task worker --loglevel=info --pool=eventlet`, then add.delay(1, 2).get() == 3."""
    for name in ("config.py", "task.py"):
        shutil.copy(TUTORIAL / name, e2e.directory / name)
    worker = e2e.start_worker("--pool=eventlet", app="task", name="tutorial")
    assert "does not consume the default queue 'celery'" in worker.log
    assert "queues=priority_low,priority_high,default" in worker.log
    producer = subprocess.run(
        [sys.executable, "-c", PRODUCER], cwd=e2e.directory, capture_output=True, text=True, timeout=90, check=True
    )
    assert producer.stdout.splitlines() == ["3", "priority_high", "SUCCESS True tutorial@e2e"]
    worker.wait_for_log("succeeded in 5.")
    assert "Task task.add[" in worker.log and "] received" in worker.log
    assert "Task task.priority_high[" in worker.log
    worker.signal(signal.SIGTERM)
    assert worker.process.wait(30) == 0
    assert "Warm shutdown" in worker.log
