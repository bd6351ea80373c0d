"""The worker's logging from Celery's settings: formats, the root logger, redirected output."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor import signals
from conveyor.config import Settings
from conveyor.utils.log import LoggingProxy, get_task_logger, redirect_stdouts, setup_logging


@pytest.fixture(autouse=True)
def restored_logging() -> Iterator[None]:
    root, task = logging.getLogger(), logging.getLogger("conveyor.task")
    saved = (root.handlers[:], root.level, task.handlers[:], task.level, task.propagate, sys.stdout, sys.stderr)
    yield
    for handler in {*root.handlers, *task.handlers} - {*saved[0], *saved[2]}:
        handler.close()
    root.handlers[:], root.level, task.handlers[:], task.level, task.propagate, sys.stdout, sys.stderr = saved


def test_the_worker_and_task_formats_go_to_the_log_file(tmp_path: Path) -> None:
    conf = Settings()
    conf.worker_log_format = "ROOT %(levelname)s %(message)s"
    conf.worker_task_log_format = "TASK %(task_name)s[%(task_id)s] %(message)s"
    logfile = tmp_path / "worker.log"
    assert setup_logging(conf, "info", str(logfile)) is False
    logging.getLogger("conveyor.worker").info("ready")
    get_task_logger("proj.tasks").warning("outside a task")
    logging.getLogger("conveyor.worker").debug("below the level")
    assert logfile.read_text().splitlines() == ["ROOT INFO ready", "TASK ???[???] outside a task"]


def test_the_root_loggers_own_handlers_go_unless_it_is_not_hijacked(tmp_path: Path) -> None:
    root = logging.getLogger()
    mine = logging.FileHandler(tmp_path / "mine.log")
    root.handlers[:] = [mine]
    conf = Settings()
    setup_logging(conf, "info", str(tmp_path / "worker.log"))
    assert mine not in root.handlers and len(root.handlers) == 1
    root.handlers[0].close()
    root.handlers[:] = [mine]
    conf.worker_hijack_root_logger = False
    setup_logging(conf, "info", str(tmp_path / "worker.log"))
    assert root.handlers == [mine]
    mine.close()


def test_a_setup_logging_receiver_takes_over(tmp_path: Path) -> None:
    seen: list[dict[str, object]] = []

    def take_over(sender: object, **kwargs: object) -> None:
        seen.append(kwargs)

    signals.setup_logging.connect(take_over)
    try:
        root = logging.getLogger()
        before = root.handlers[:]
        assert setup_logging(Settings(), "warning", str(tmp_path / "worker.log")) is True
        assert root.handlers == before
        assert seen and seen[0]["loglevel"] == logging.WARNING  # a number, as Celery sends it
    finally:
        signals.setup_logging.disconnect(take_over)


def test_redirected_output_is_logged_line_by_line_at_the_configured_level(tmp_path: Path) -> None:
    conf = Settings()
    conf.worker_log_format = "%(name)s %(levelname)s %(message)s"
    conf.worker_redirect_stdouts_level = "ERROR"
    logfile = tmp_path / "worker.log"
    setup_logging(conf, "info", str(logfile))
    redirect_stdouts(conf)
    assert isinstance(sys.stdout, LoggingProxy) and sys.stderr is sys.stdout
    print("one\ntwo", end="")
    print(" halves")
    assert logfile.read_text().splitlines() == ["conveyor.redirected ERROR one", "conveyor.redirected ERROR two halves"]


def test_redirection_can_be_turned_off() -> None:
    conf = Settings()
    conf.worker_redirect_stdouts = False
    before = sys.stdout
    redirect_stdouts(conf)
    assert sys.stdout is before
