"""The signals of a worker's life, with Celery's arguments, from a real worker process started
through the command line: the same module runs under `conveyor worker` and, renamed back,
under `celery worker`, and records the same marks."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.processes import E2E

SIGNALS_APP = """
import os
from conveyor import Celery
from conveyor import signals
from conveyor.beat import PersistentScheduler

app = Celery("sigapp", broker={broker!r}, backend={broker!r})
app.conf.update({settings})
PARENT = os.getpid()  # imported by the worker before it forks its children


def mark(text):
    with open("marks.txt", "a") as marks:
        marks.write(text + "\\n")


@signals.celeryd_init.connect
def on_init(sender=None, conf=None, instance=None, **kwargs):
    mark(f"celeryd_init {{isinstance(sender, str)}} {{conf is not None}} {{instance is not None}}")


@signals.celeryd_after_setup.connect
def on_setup(sender=None, instance=None, conf=None, **kwargs):
    mark(f"celeryd_after_setup {{isinstance(sender, str)}} {{instance is not None}}")


@signals.worker_init.connect
def on_worker_init(sender=None, **kwargs):
    mark("worker_init")


@signals.import_modules.connect
def on_import(sender=None, **kwargs):
    mark("import_modules")


@signals.worker_ready.connect
def on_ready(sender=None, **kwargs):
    mark("worker_ready")


@signals.worker_process_init.connect
def on_child(sender=None, **kwargs):
    mark(f"worker_process_init {{os.getpid() != PARENT}}")


@signals.worker_process_shutdown.connect
def on_child_end(sender=None, pid=None, exitcode=None, **kwargs):
    mark(f"worker_process_shutdown {{pid == os.getpid()}} {{exitcode}}")


@signals.worker_shutting_down.connect
def on_shutting_down(sender=None, sig=None, how=None, exitcode=None, **kwargs):
    mark(f"worker_shutting_down {{sig}} {{how}} {{exitcode}}")


@signals.worker_shutdown.connect
def on_shutdown(sender=None, **kwargs):
    mark("worker_shutdown")


@signals.after_setup_logger.connect
def on_logger(sender=None, logger=None, loglevel=None, **kwargs):
    mark(f"after_setup_logger {{logger is not None}} {{loglevel}}")


@signals.after_setup_task_logger.connect
def on_task_logger(sender=None, logger=None, **kwargs):
    mark(f"after_setup_task_logger {{logger is not None}}")


@signals.heartbeat_sent.connect
def on_heartbeat(sender=None, **kwargs):
    mark("heartbeat_sent")


@signals.beat_init.connect
def on_beat(sender=None, **kwargs):
    mark(f"beat_init {{type(sender).__name__}}")


@signals.beat_embedded_init.connect
def on_embedded_beat(sender=None, **kwargs):
    mark("beat_embedded_init")


class MarkedScheduler(PersistentScheduler):  # a project's own scheduler, named by beat_scheduler

    def setup_schedule(self):
        mark("custom scheduler")
        super().setup_schedule()


@signals.task_revoked.connect
def on_revoked(sender=None, request=None, terminated=None, expired=None, **kwargs):
    mark(f"task_revoked {{request.id}} {{terminated}} {{expired}}")


@app.task(name="sig.add")
def add(x, y):
    return x + y

"""

EXPECTED = [
    "celeryd_init True True True", "celeryd_after_setup True True", "worker_init", "import_modules",
    "worker_ready", "worker_process_init True", "worker_shutting_down SIGTERM Warm 0", "worker_shutdown",
    "after_setup_logger True 20", "after_setup_task_logger True", "heartbeat_sent", "beat_embedded_init",
    "custom scheduler",
]  # fmt: skip


@pytest.mark.parametrize("queue", ["conveyor", "celery"])
def test_a_workers_life_sends_celerys_signals(queue: str, e2e: E2E, request: pytest.FixtureRequest) -> None:
    directory = e2e.directory
    if queue == "celery":  # on Redis: Celery has no SQLite broker
        url, options = request.getfixturevalue("redis_store")
        settings: dict[str, Any] = {"broker_transport_options": options, "result_backend_transport_options": options}
    else:
        url, settings = f"sqlite:///{e2e.db}", {}
    settings["beat_scheduler"] = "sigapp:MarkedScheduler"
    source = SIGNALS_APP.format(broker=url, settings=settings)
    (directory / "sigapp.py").write_text(source.replace("conveyor", queue))
    marks = directory / "marks.txt"
    command = [sys.executable, "-m", f"{queue}.cli" if queue == "conveyor" else "celery", "-A", "sigapp", "worker",
               "-P", "prefork", "-c", "1", "-l", "info", "-B", "-E"]  # fmt: skip
    log = open(directory / "worker.log", "w")  # noqa: SIM115 - kept open for the worker's lifetime
    worker = subprocess.Popen(command, cwd=directory, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    try:
        wait_for(marks, "worker_ready")
        producer = load_app(directory, queue, url, settings)
        assert producer.send_task("sig.add", (2, 3)).get(timeout=30) == 5
        later = producer.send_task("sig.add", (1, 1), countdown=2)
        producer.control.revoke(later.id)
        wait_for(marks, f"task_revoked {later.id} False False")
        producer.close()
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
    seen = marks.read_text().splitlines()
    for expected in EXPECTED:
        assert expected in seen, (expected, seen, (directory / "worker.log").read_text())
    assert any(line.startswith("worker_process_shutdown True") for line in seen), seen
    assert any(line.startswith("beat_init ") for line in seen), seen


def wait_for(marks: Path, text: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not (marks.exists() and text in marks.read_text()):
        assert time.monotonic() < deadline, f"no {text!r} mark"
        time.sleep(0.1)


def load_app(directory: Path, queue: str, url: str, settings: dict[str, Any]) -> Any:
    """A producer of the queue under test, apart from the worker's module (whose receivers write marks)."""
    import importlib

    module = importlib.import_module(queue)
    app = module.Celery("producer", broker=url, backend=url)
    app.conf.update(settings)
    return app
