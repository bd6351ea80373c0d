"""A worker process's garbage collector: what is loaded is frozen, young objects are collected
every 2,000 allocations, and a process that asked for less often keeps its own setting. Each
case runs in a fresh interpreter: freezing the test process's objects would outlive the test."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

PROBE = """
import gc, json
{before}
from conveyor.worker import collector
collector.tune_for_worker()
print(json.dumps([gc.get_threshold()[0], gc.get_freeze_count() > 0]))
"""


def tuned(before: str = "") -> list[object]:
    run = subprocess.run(
        [sys.executable, "-c", PROBE.format(before=before)], capture_output=True, text=True, check=True
    )
    return list(json.loads(run.stdout))


def test_a_worker_process_freezes_what_is_loaded_and_collects_young_objects_less_often() -> None:
    assert tuned("gc.set_threshold(700, 10, 10)") == [2000, True]


@pytest.mark.parametrize("young", [2000, 50_000])
def test_a_process_that_collects_less_often_already_keeps_its_setting(young: int) -> None:
    assert tuned(f"gc.set_threshold({young}, 10, 10)") == [young, True]
