"""Celery's app signals in a real worker: on_after_configure and on_after_finalize once at start,
on_after_fork in each prefork child."""

from __future__ import annotations

import os
from pathlib import Path

from conveyor import Celery
from tests.conftest import contract_app, store_url
from tests.contract.test_worker_contract import running


def test_app_signals_fire_at_worker_start_and_in_each_child(tmp_path: Path) -> None:
    app: Celery = contract_app("hooks", store_url("sqlite", tmp_path))
    marks = tmp_path / "marks.txt"

    def mark(text: str) -> None:
        with marks.open("a") as file:
            file.write(f"{text} {os.getpid()}\n")

    app.on_after_configure.connect(lambda sender, **kwargs: mark("configured"))
    app.on_after_finalize.connect(lambda sender, **kwargs: mark("finalized"))
    app.on_after_fork.connect(lambda sender, **kwargs: mark("forked"))

    @app.task(name="h.pid")
    def pid() -> int:
        return os.getpid()

    try:
        with running(app, "prefork", concurrency=2):
            child = pid.delay().get(timeout=20)
    finally:
        app.close()
    lines = marks.read_text().split("\n")
    assert lines[:2] == [f"configured {os.getpid()}", f"finalized {os.getpid()}"]
    forked = {line.split()[1] for line in lines if line.startswith("forked")}
    assert len(forked) == 2 and str(child) in forked and str(os.getpid()) not in forked
