"""The `conveyor` command line (S7)."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from conveyor import Celery
from tests.processes import E2E


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["worker"],
        ["call"],
        ["result"],
        ["purge"],
        ["status"],
        ["revoke"],
        ["dead-letters"],
        ["rate-limit"],
        ["flower"],
        ["dashboard"],
        ["inspect"],
        ["control"],
    ],
)
def test_help_everywhere(e2e: E2E, command: list[str]) -> None:
    run = e2e.cli(*command, "--help")
    assert "Usage: " in run.stdout and "--help" in run.stdout


def test_version(e2e: E2E) -> None:
    from conveyor import __version__

    assert e2e.cli("--version").stdout.strip() == f"conveyor, version {__version__}"


def test_worker_help_lists_the_tutorial_flags(e2e: E2E) -> None:
    text = e2e.cli("worker", "--help").stdout
    for flag in ("-l, --loglevel", "-c, --concurrency", "-P, --pool", "-Q, --queues", "-n, --hostname",
                 "--prefetch-multiplier", "--max-tasks-per-child", "eventlet", "-E, --task-events"):  # fmt: skip
        assert flag in text, flag


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_such_module", "no module named 'no_such_module'"),
        ("broken", "importing 'broken' failed: ZeroDivisionError"),
        ("plain:thing", "has no attribute 'thing'"),
        ("plain", "has no any Conveyor/Celery app"),
    ],
)
def test_bad_app_is_a_short_error(e2e: E2E, spec: str, message: str) -> None:
    (e2e.directory / "broken.py").write_text("1 / 0\n")
    (e2e.directory / "plain.py").write_text("thing = 42\n")
    run = e2e.cli("-A", spec, "status", check=False)
    assert run.returncode == 2
    assert message in run.stderr and "Traceback" not in run.stderr


def test_call_result_purge_status(e2e: E2E) -> None:
    e2e.write_app()
    task_id = e2e.cli("-A", "e2eapp", "call", "e2e.add", "--args", "[2, 3]").stdout.strip()
    e2e.cli("-A", "e2eapp", "call", "e2e.add", "--kwargs", json.dumps({"x": 1, "y": 1}), "--countdown", "60")
    assert e2e.cli("-A", "e2eapp", "result", task_id).stdout.strip() == "PENDING: None"
    status = e2e.cli("-A", "e2eapp", "status", check=False)
    assert status.returncode == 1 and "No workers online" in status.stdout and "celery" in status.stdout
    declined = e2e.cli("-A", "e2eapp", "purge", input="n\n", check=False)
    assert declined.returncode == 1 and "Delete 2 waiting message(s)" in declined.stdout
    assert "Purged 2 message(s)" in e2e.cli("-A", "e2eapp", "purge", "-f").stdout
    worker = e2e.start_worker("-P", "threads", name="cli")
    task_id = e2e.cli("-A", "e2eapp", "call", "e2e.add", "--args", "[2, 3]").stdout.strip()
    assert e2e.cli("-A", "e2eapp", "result", task_id, "--wait").stdout.strip() == "SUCCESS: 5"
    status = e2e.cli("-A", "e2eapp", "status")
    assert "cli@e2e" in status.stdout and "1 node(s) online" in status.stdout
    worker.wait_for_log("succeeded in")


def test_rate_limit_sets_lists_and_clears(e2e: E2E) -> None:
    """S8 actions from the command line (Celery's `control rate_limit`)."""
    e2e.write_app()
    assert "Rate limit of e2e.add: 10/m" in e2e.cli("-A", "e2eapp", "rate-limit", "e2e.add", "10/m").stdout
    assert e2e.cli("-A", "e2eapp", "rate-limit").stdout.strip() == "e2e.add: 10/m"
    bad = e2e.cli("-A", "e2eapp", "rate-limit", "e2e.add", "quickly", check=False)
    assert bad.returncode == 1 and "rate limit for e2e.add" in bad.stderr and "'quickly'" in bad.stderr
    assert "as configured" in e2e.cli("-A", "e2eapp", "rate-limit", "e2e.add", "--clear").stdout
    assert e2e.cli("-A", "e2eapp", "rate-limit").stdout.strip() == ""


def test_call_rejects_bad_arguments(e2e: E2E) -> None:
    e2e.write_app()
    run = e2e.cli("-A", "e2eapp", "call", "e2e.add", "--args", "[1]", check=False)
    assert run.returncode == 1 and "missing a required argument: 'y'" in run.stderr
    run = e2e.cli("-A", "e2eapp", "call", "e2e.add", "--args", "{oops", check=False)
    assert run.returncode == 2 and "--args must be JSON" in run.stderr


def test_asyncio_pool_runs_async_and_sync_tasks(e2e: E2E) -> None:
    """Beyond Celery: `-P asyncio` interleaves `async def` tasks; sync ones run beside them."""
    e2e.write_app()
    worker = e2e.start_worker("-P", "asyncio", "-c", "50", name="aio")
    app = e2e.app
    sleepers = [app.tasks["e2e.async_sleep"].delay(1.0) for _ in range(50)]
    total = app.tasks["e2e.add"].delay(20, 22)
    # Fifty 1-second sleeps one after another would take 50 s: interleaved, they share one second.
    deadline = time.monotonic() + 20
    pids = {result.get(timeout=max(0.1, deadline - time.monotonic())) for result in sleepers}
    assert total.get(timeout=30) == 42
    assert pids == {worker.process.pid}  # one process: the event loop, not 50 children
    assert "concurrency: 50 (asyncio)" in worker.log
    worker.wait_for_log("succeeded in")


def test_flower_stops_at_once_with_pages_open(e2e: E2E) -> None:
    """An open page keeps a live stream: SIGTERM ends the streams, and the server, promptly."""
    import urllib.request

    from tests.processes import free_port

    e2e.write_app()
    port = free_port()
    dashboard = e2e.start_worker(f"--port={port}", name="dash", command=("flower", "-l", "info"),
                                 ready="Uvicorn running")  # fmt: skip
    stream = urllib.request.urlopen(f"http://127.0.0.1:{port}/api/stream", timeout=10)
    assert stream.readline() == b"retry: 3000\n"
    started = time.monotonic()
    dashboard.signal(signal.SIGTERM)
    assert dashboard.process.wait(10) in (0, -signal.SIGTERM)  # (uvicorn raises the signal again once stopped)
    assert time.monotonic() - started < 5
    assert stream.read() is not None  # the stream ended (no error while reading what was left)
    stream.close()
    assert "ERROR" not in dashboard.log


def test_flower_serves_the_dashboard_with_authentication(e2e: E2E) -> None:
    """S7/S8: `conveyor -A task flower --port=5555`, here on a free port and behind basic auth."""
    import base64
    import urllib.error
    import urllib.request

    from tests.processes import free_port

    e2e.write_app()
    e2e.start_worker("-P", "threads", name="seen")
    port = free_port()
    e2e.start_worker(
        f"--port={port}", "--basic-auth", "admin:pw", name="dash", command=("flower", "-l", "info"),
        ready="Uvicorn running",
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{url}/api/overview", timeout=10)
    assert refused.value.code == 401
    refused.value.close()
    token = base64.b64encode(b"admin:pw").decode()
    request = urllib.request.Request(f"{url}/api/overview", headers={"Authorization": f"Basic {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        overview = json.loads(response.read())
    assert [w["hostname"] for w in overview["workers"]] == ["seen@e2e"]
    page = urllib.request.Request(f"{url}/", headers={"Authorization": f"Basic {token}"})
    with urllib.request.urlopen(page, timeout=10) as response:
        assert "<title>Workers · Conveyor</title>".encode() in response.read()


def test_text_from_the_broker_is_shown_as_it_is_never_as_markup(e2e: E2E) -> None:
    from conveyor.brokers.base import Outgoing
    from conveyor.messages import Message

    e2e.write_app()
    broker = e2e.app.broker
    broker.publish([Outgoing("dl", Message("[/oops]", id="m1").encode(format="celery"))])
    [delivery] = broker.fetch(["dl"], 1, 1.0)
    broker.dead_letter(delivery, "[bold]kept[/bold] as written")
    e2e.app.tasks["e2e.add"].apply_async((1, 2), queue="[/q]")
    letters = e2e.cli("-A", "e2eapp", "dead-letters", check=False)
    assert letters.returncode == 0, letters.stderr
    assert "[/oops][m1]" in letters.stdout and "[bold]kept[/bold] as written" in letters.stdout
    status = e2e.cli("-A", "e2eapp", "status", check=False)
    assert "[/q]" in status.stdout and "Traceback" not in status.stderr


def test_status_and_purge_with_the_broker_down_print_one_error_line(e2e: E2E) -> None:
    e2e.write_app(broker="redis://127.0.0.1:1/0")
    for command in (("status",), ("purge", "-f")):
        done = e2e.cli("-A", "e2eapp", *command, check=False)
        assert done.returncode == 1, command
        assert "Traceback" not in done.stderr
        assert done.stderr.startswith("Error: "), done.stderr


def test_bad_urls_are_errors_naming_the_setting(e2e: E2E) -> None:
    e2e.write_app()
    for url, expected in [
        ("redis://127.0.0.1:6379/notadb", "the database 'notadb' is not a number"),
        ("redis://127.0.0.1:6379/11x", "the database '11x' is not a number"),
        ("redis://127.0.0.1:99999/0", "broker_url 'redis://127.0.0.1:99999/0': Port out of range"),
        ("", "setting 'broker_url' expects a URL"),
    ]:
        done = e2e.cli("-A", "e2eapp", "-b", url, "status", check=False)
        assert done.returncode != 0, url
        assert expected in done.stderr, done.stderr


def test_a_worker_with_no_task_registered_says_so(e2e: E2E) -> None:
    (e2e.directory / "empty.py").write_text("from conveyor import Celery\napp = Celery('empty')\n")
    worker = e2e.start_worker(app="empty")
    worker.wait_for_log("No task is registered")


def test_the_dashboard_on_a_busy_port_is_one_error_line_and_no_url(e2e: E2E) -> None:
    import socket

    e2e.write_app()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = e2e.cli("-A", "e2eapp", "flower", f"--port={port}", check=False)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [f"Error: cannot listen on 127.0.0.1:{port}: Address already in use"]


LOGGING_APP = """
import logging
from pathlib import Path
from conveyor import Celery
from conveyor.signals import after_setup_logger, setup_logging

app = Celery("logapp", broker="{broker}")
app.conf.broker_transport_options = {options}
TAKE_OVER = {take_over}

if TAKE_OVER:
    @setup_logging.connect
    def configure(loglevel, **kwargs):
        Path("marks.txt").write_text("setup_logging " + logging.getLevelName(loglevel))
        logging.basicConfig(filename="own.log", level=logging.INFO, format="OWN %(message)s", force=True)
else:
    @after_setup_logger.connect
    def tweak(logger, loglevel, **kwargs):
        Path("marks.txt").write_text(f"after_setup_logger {{logging.getLevelName(loglevel)}} {{len(logger.handlers)}}")
"""


@pytest.mark.parametrize("queue", ["conveyor", "celery"])
def test_a_setup_logging_receiver_takes_over_the_workers_logging(
    queue: str, e2e: E2E, request: pytest.FixtureRequest
) -> None:
    """Celery's rule, shown on both: the module renamed back does the same under `celery worker`."""
    import subprocess
    import sys

    if queue == "celery":  # on Redis: Celery has no SQLite broker
        url, options = request.getfixturevalue("redis_store")
    else:
        url, options = f"sqlite:///{e2e.db}", {}
    source = LOGGING_APP.format(broker=url, options=options, take_over=True)
    (e2e.directory / "logapp.py").write_text(source.replace("conveyor", queue))
    program = ["conveyor.cli"] if queue == "conveyor" else ["celery"]
    started = subprocess.Popen(
        [sys.executable, "-m", *program, "-A", "logapp", "worker", "-l", "info", "-P", "solo"],
        cwd=e2e.directory, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    own = e2e.directory / "own.log"
    deadline = time.monotonic() + 20
    while not (own.exists() and "ready" in own.read_text()):
        assert time.monotonic() < deadline, "the worker did not log to the receiver's file"
        time.sleep(0.1)
    started.terminate()
    output, _ = started.communicate(timeout=20)
    assert "ready" not in output  # nothing of the worker's own logging configuration
    assert (e2e.directory / "marks.txt").read_text() == "setup_logging INFO"
    assert "OWN " in own.read_text()


def test_after_setup_logger_gets_the_configured_root_logger(e2e: E2E) -> None:
    (e2e.directory / "logapp.py").write_text(
        LOGGING_APP.format(broker=f"sqlite:///{e2e.db}", options={}, take_over=False)
    )
    e2e.start_worker(app="logapp")
    assert (e2e.directory / "marks.txt").read_text() == "after_setup_logger INFO 1"


FORMATS_APP = """
import logging
import sys
from conveyor import Celery
from conveyor.utils.log import get_task_logger

logging.basicConfig(stream=sys.stderr, format="MINE %(message)s")
app = Celery("fmtapp", broker="{broker}", backend="{broker}")
app.conf.update({settings})
logger = get_task_logger(__name__)


@app.task(name="fmt.speak")
def speak(word):
    logger.warning("said %s", word)
    print(f"printed {{word}}")
    return word
"""


def test_log_formats_for_the_worker_and_its_tasks_and_printed_output(e2e: E2E) -> None:
    settings = {
        "worker_log_format": "ROOT %(levelname)s %(message)s",
        "worker_task_log_format": "TASK %(task_name)s[%(task_id)s] %(message)s",
    }
    (e2e.directory / "fmtapp.py").write_text(FORMATS_APP.format(broker=f"sqlite:///{e2e.db}", settings=settings))
    worker = e2e.start_worker("-P", "prefork", "-c", "1", app="fmtapp")
    producer = Celery("producer", broker=f"sqlite:///{e2e.db}")
    result = producer.send_task("fmt.speak", ("hello",))
    assert result.get(timeout=20) == "hello"
    producer.close()
    worker.wait_for_log("printed hello")
    lines = worker.log.splitlines()
    assert any(line.startswith("ROOT INFO ") and "ready" in line for line in lines)
    assert f"TASK fmt.speak[{result.id}] said hello" in lines
    assert "ROOT WARNING printed hello" in lines  # print() in a task is logged (worker_redirect_stdouts)
    assert not any(line.startswith("MINE ") for line in lines)  # the root logger was taken over


def test_the_same_logging_settings_mean_the_same_on_celery(e2e: E2E, redis_store: tuple[str, dict[str, str]]) -> None:
    """The formats, hijacking and redirected output above are Celery's: the same module, renamed
    back, logs the same lines from a Celery worker (on Redis: Celery has no SQLite broker)."""
    import subprocess
    import sys

    import celery

    url, options = redis_store
    settings = {
        "worker_log_format": "ROOT %(levelname)s %(message)s",
        "worker_task_log_format": "TASK %(task_name)s[%(task_id)s] %(message)s",
        "broker_transport_options": options, "result_backend_transport_options": options,
    }  # fmt: skip
    source = FORMATS_APP.format(broker=url, settings=settings)
    (e2e.directory / "fmtapp.py").write_text(source.replace("conveyor", "celery"))
    log = e2e.directory / "celery.log"
    with open(log, "w") as output:
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "fmtapp", "worker", "-P", "prefork", "-c", "1", "-l", "info"],
            cwd=e2e.directory, stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    producer = celery.Celery("producer", broker=url, backend=url)
    producer.conf.update(broker_transport_options=options, result_backend_transport_options=options)
    try:
        result = producer.send_task("fmt.speak", ("hello",))
        assert result.get(timeout=30) == "hello"
        deadline = time.monotonic() + 10
        while "printed hello" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(20)
    lines = log.read_text().splitlines()
    assert any(line.startswith("ROOT INFO ") and "ready" in line for line in lines), lines
    assert f"TASK fmt.speak[{result.id}] said hello" in lines, lines
    assert "ROOT WARNING printed hello" in lines, "\n".join(lines)
    assert not any(line.startswith("MINE ") for line in lines)


def test_with_the_root_logger_not_hijacked_the_apps_own_handler_stays(e2e: E2E) -> None:
    settings = {"worker_hijack_root_logger": False, "worker_redirect_stdouts": False}
    (e2e.directory / "fmtapp.py").write_text(FORMATS_APP.format(broker=f"sqlite:///{e2e.db}", settings=settings))
    worker = e2e.start_worker("-P", "solo", app="fmtapp")
    producer = Celery("producer", broker=f"sqlite:///{e2e.db}")
    assert producer.send_task("fmt.speak", ("again",)).get(timeout=20) == "again"
    producer.close()
    worker.wait_for_log("printed again")
    lines = worker.log.splitlines()
    assert any(line.startswith("MINE ") and "ready" in line for line in lines)
    assert "printed again" in lines  # written as it is, not logged
