"""`conveyor inspect` and `conveyor control` against real worker processes."""

from __future__ import annotations

import json
import time

import pytest

from tests.processes import E2E


@pytest.mark.parametrize("broker", ["sqlite", "redis"])
def test_inspect_ping_is_a_liveness_probe(e2e: E2E, broker: str) -> None:
    """Exit 0 when the named worker answers, non-zero with one error line when none does."""
    if broker == "redis":
        from tests.conftest import store_url

        url, options = store_url("redis", e2e.directory)
        e2e.write_app(broker=url, options=options)
    else:
        e2e.write_app()
    e2e.start_worker("-P", "prefork", "-c", "2", name="probe")
    run = e2e.cli("-A", "e2eapp", "inspect", "ping", "-d", "probe@e2e")
    assert run.returncode == 0
    assert run.stdout.splitlines()[:2] == ["-> probe@e2e: OK", "    pong"] and "1 node online." in run.stdout
    missing = e2e.cli("-A", "e2eapp", "inspect", "ping", "-d", "gone@e2e", "--timeout", "0.3", check=False)
    assert missing.returncode != 0
    assert missing.stderr.strip() == "Error: No nodes replied within time constraint."


def test_inspect_json_and_control_change_a_running_worker(e2e: E2E) -> None:
    e2e.write_app()
    worker = e2e.start_worker("-P", "prefork", "-c", "1", name="ops")
    app = e2e.app
    result = app.tasks["e2e.sleep"].delay(2)
    deadline = time.monotonic() + 10
    while True:
        active = json.loads(e2e.cli("-A", "e2eapp", "inspect", "active", "--json").stdout)["ops@e2e"]
        if active or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert [task["id"] for task in active] == [result.id]
    registered = json.loads(e2e.cli("-A", "e2eapp", "inspect", "registered", "--json").stdout)
    assert "e2e.add" in registered["ops@e2e"]
    grow = e2e.cli("-A", "e2eapp", "control", "pool_grow", "2")
    assert "pool will grow" in grow.stdout
    stats = json.loads(e2e.cli("-A", "e2eapp", "inspect", "stats", "--json").stdout)["ops@e2e"]
    assert stats["pool"]["max-concurrency"] == 3
    assert "add consumer extra" in e2e.cli("-A", "e2eapp", "control", "add_consumer", "extra").stdout
    bad = e2e.cli("-A", "e2eapp", "control", "pool_grow", "many", check=False)
    assert bad.returncode == 2 and "n must be int, not 'many'" in bad.stderr
    assert e2e.cli("-A", "e2eapp", "control", "shutdown").returncode == 0
    assert worker.process.wait(20) == 0
    assert result.get(timeout=5)  # the running task finished first (warm shutdown)


def test_the_worker_autoscales_from_the_command_line(e2e: E2E) -> None:
    e2e.write_app()
    e2e.start_worker("-P", "threads", "--autoscale=3,1", name="auto")
    app = e2e.app
    results = [app.tasks["e2e.sleep"].delay(1.5) for _ in range(3)]
    deadline = time.monotonic() + 10
    size = 1
    while size < 3 and time.monotonic() < deadline:
        stats = json.loads(e2e.cli("-A", "e2eapp", "inspect", "stats", "--json").stdout)["auto@e2e"]
        size = stats["pool"]["max-concurrency"]
        time.sleep(0.2)
    assert size == 3
    for result in results:
        result.get(timeout=10)


def test_o_fair_hands_prefork_children_one_job_at_a_time(e2e: E2E) -> None:
    e2e.write_app()
    e2e.start_worker("-P", "prefork", "-c", "2", "-O", "fair", name="fair")
    e2e.start_worker("-P", "prefork", "-c", "2", name="ahead")
    conf = json.loads(e2e.cli("-A", "e2eapp", "inspect", "conf", "--json").stdout)
    assert conf["fair@e2e"]["worker_prefork_ahead"] is False
    assert "worker_prefork_ahead" not in conf["ahead@e2e"]  # only what was changed: the default is on
