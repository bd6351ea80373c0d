"""Remote control and inspect over every broker: Celery's calls, Celery's reply shapes.

Real workers run in threads of the test process and answer through the
broker the test's app uses.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from conveyor import Celery
from conveyor.control import CONTROL_REPLIES
from conveyor.exceptions import SoftTimeLimitExceeded, TaskRevokedError
from conveyor.worker import Worker
from conveyor.worker import autoscale as autoscale_module
from conveyor.worker.control import COMMANDS, RemoteControl, control_command, inspect_command
from tests.conftest import BROKERS, contract_app, store_url
from tests.contract.test_worker_contract import running as worker_running


def make_app(store: tuple[str, dict[str, str]]) -> Celery:
    app = contract_app("ctl", store)

    @app.task(name="t.sleep")
    def sleep(seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    @app.task(name="t.busy")
    def busy(seconds: float) -> float:
        # Python bytecodes all along, so a soft time limit or a terminate reaches it on threads.
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            pass
        return seconds

    @app.task(name="t.add", rate_limit="100/s")
    def add(x: int, y: int) -> int:
        return x + y

    return app


@pytest.fixture(params=BROKERS)
def app(request: pytest.FixtureRequest, tmp_path) -> Iterator[Celery]:  # type: ignore[no-untyped-def]
    application = make_app(store_url(request.param, tmp_path))
    yield application
    application.close()


@contextlib.contextmanager
def running(app: Celery, hostname: str = "w1@ctl", pool: str = "threads", **options: Any) -> Iterator[Worker]:
    with worker_running(app, pool, hostname, **options) as worker:
        wait_until_answering(app, hostname)
        yield worker


def wait_until_answering(app: Celery, hostname: str) -> None:
    """The caller's first command opens its broker connection, which on a loaded machine can
    use up the 1 s a command waits for replies: the tests time the commands, not that."""
    assert eventually(lambda: app.control.ping(destination=[hostname], timeout=2)), f"{hostname} does not answer"


def eventually(check: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def test_inspect_answers_in_celerys_shapes_while_tasks_run(app: Celery) -> None:
    with running(app, concurrency=2) as worker:
        results = [app.tasks["t.sleep"].delay(1.5) for _ in range(3)]
        inspect = app.control.inspect(timeout=2)
        assert eventually(lambda: len(inspect.active()["w1@ctl"]) == 2)
        active = inspect.active()["w1@ctl"]
        request = active[0]
        assert {r["id"] for r in active} <= {r.id for r in results}
        assert request["name"] == request["type"] == "t.sleep" and request["args"] == [1.5]
        assert request["kwargs"] == {} and request["hostname"] == "w1@ctl" and request["time_start"] > 0
        assert request["delivery_info"]["routing_key"] == "celery" and request["worker_pid"]
        reserved = inspect.reserved()["w1@ctl"]
        assert [r["id"] for r in reserved] == [results[2].id] and reserved[0]["time_start"] is None
        assert inspect.ping() == {"w1@ctl": {"ok": "pong"}}
        assert app.control.ping() == [{"w1@ctl": {"ok": "pong"}}]
        assert inspect.scheduled() == {"w1@ctl": []}
        registered = inspect.registered()["w1@ctl"]
        assert {"t.add", "t.busy", "t.sleep"} <= set(registered) and registered == sorted(registered)
        assert "t.add [rate_limit=100/s]" in inspect.registered("rate_limit")["w1@ctl"]
        queues = inspect.active_queues()["w1@ctl"]
        assert [q["name"] for q in queues] == ["celery"] and queues[0]["routing_key"] == "celery"
        query = inspect.query_task(results[0].id, results[2].id)["w1@ctl"]
        assert query[results[0].id][0] == "active" and query[results[2].id][0] == "reserved"
        assert query[results[0].id][1]["id"] == results[0].id
        stats = inspect.stats()["w1@ctl"]
        assert stats["pool"]["max-concurrency"] == 2 and stats["pool"]["implementation"] == "threads"
        assert stats["prefetch_count"] == worker.prefetch and stats["pid"] and stats["uptime"] >= 0
        assert {"utime", "stime", "maxrss"} <= stats["rusage"].keys()
        assert "conveyor" in inspect.report()["w1@ctl"]["ok"]
        assert inspect.clock()["w1@ctl"]["clock"] > 0
        for result in results:
            assert result.get(timeout=10) == 1.5
        assert inspect.stats()["w1@ctl"]["total"] == {"t.sleep": 3}
        assert inspect.active() == {"w1@ctl": []}
    # The caller read and removed every reply: nothing of them stays in the broker.
    assert app.state.kv_items(CONTROL_REPLIES) == {}


def test_conf_shows_the_settings_with_passwords_hidden(app: Celery) -> None:
    app.conf.result_backend_transport_options = {
        **app.conf.result_backend_transport_options, "sentinel_kwargs": {"password": "hunter2"}
    }  # fmt: skip
    app.conf.task_default_queue = "celery"
    with running(app):
        conf = app.control.inspect().conf()["w1@ctl"]
        assert conf["broker_url"] == app.conf.broker_url.replace("guest:guest", "guest:***")
        assert "hunter2" not in repr(conf)
        assert conf["result_backend_transport_options"]["sentinel_kwargs"]["password"] == "********"
        assert "worker_prefetch_multiplier" not in conf  # only what differs from the defaults
        assert app.control.inspect().conf(with_defaults=True)["w1@ctl"]["worker_prefetch_multiplier"] == 4


def test_destination_chooses_who_answers_and_one_hostname_gets_its_reply_alone(app: Celery) -> None:
    with running(app, "w1@ctl"), running(app, "w2@ctl"):
        assert sorted(app.control.inspect().ping()) == ["w1@ctl", "w2@ctl"]
        assert app.control.ping(destination=["w2@ctl"]) == [{"w2@ctl": {"ok": "pong"}}]
        assert app.control.inspect(destination="w1@ctl").ping() == {"ok": "pong"}
        assert app.control.inspect(destination="nobody@ctl", timeout=0.3).ping() is None
        assert app.control.ping(destination="nobody@ctl", timeout=0.3) == []
        assert len(app.control.inspect(limit=1).ping()) == 1


def test_replies_reach_only_the_caller_that_asked(app: Celery) -> None:
    """Callers asking at the same time each get their own reply, once."""
    with running(app):
        replies: list[Any] = []

        def ask(n: int) -> None:
            replies.append((n, app.control.inspect(timeout=3).query_task(f"id-{n}")))

        callers = [threading.Thread(target=ask, args=(n,)) for n in range(6)]
        for caller in callers:
            caller.start()
        for caller in callers:
            caller.join(10)
        assert sorted(n for n, _ in replies) == list(range(6))
        assert all(reply == {"w1@ctl": {}} for _, reply in replies)
    assert app.state.kv_items(CONTROL_REPLIES) == {}


@pytest.mark.parametrize("pool", ["threads", "prefork"])
def test_pool_grow_and_shrink_change_how_many_tasks_run_at_once(app: Celery, pool: str) -> None:
    with running(app, pool=pool, concurrency=1) as worker:
        assert app.control.pool_grow(2, reply=True) == [{"w1@ctl": {"ok": "pool will grow"}}]
        results = [app.tasks["t.sleep"].delay(1) for _ in range(3)]
        assert eventually(lambda: len(app.control.inspect().active()["w1@ctl"]) == 3), "3 did not run at once"
        stats = app.control.inspect().stats()["w1@ctl"]["pool"]
        assert stats["max-concurrency"] == 3
        if pool == "prefork":
            assert len(stats["processes"]) == 3
        for result in results:
            result.get(timeout=10)
        assert app.control.pool_shrink(2, reply=True) == [{"w1@ctl": {"ok": "pool will shrink"}}]
        assert worker.concurrency == 1
        if pool == "prefork":
            assert eventually(lambda: len(app.control.inspect().stats()["w1@ctl"]["pool"]["processes"]) == 1)
        results = [app.tasks["t.sleep"].delay(0.5) for _ in range(2)]
        time.sleep(0.3)
        assert len(app.control.inspect().active()["w1@ctl"]) == 1
        for result in results:
            result.get(timeout=10)


def test_the_solo_pool_says_it_cannot_grow(app: Celery) -> None:
    with running(app, pool="solo"):
        (reply,) = app.control.pool_grow(1, reply=True)
        assert "solo pool runs one task at a time" in reply["w1@ctl"]["error"]


def test_add_and_cancel_consumer_change_the_queues_a_worker_takes_from(app: Celery) -> None:
    with running(app):
        assert app.control.add_consumer("other", reply=True) == [{"w1@ctl": {"ok": "add consumer other"}}]
        assert [q["name"] for q in app.control.inspect().active_queues()["w1@ctl"]] == ["celery", "other"]
        assert app.tasks["t.add"].apply_async((1, 2), queue="other").get(timeout=10) == 3
        reply = app.control.cancel_consumer("other", reply=True)
        assert reply == [{"w1@ctl": {"ok": "no longer consuming from 'other'"}}]
        time.sleep(1.2)  # a fetch under way when the queue went ends first
        waiting = app.tasks["t.add"].apply_async((1, 2), queue="other")
        time.sleep(1.5)
        assert waiting.state == "PENDING"


def test_time_limit_applies_to_the_runs_that_start_next(app: Celery) -> None:
    with running(app):
        reply = app.control.time_limit("t.busy", soft=0.3, hard=5, reply=True)
        assert reply == [{"w1@ctl": {"ok": "time limits set successfully"}}]
        with pytest.raises(SoftTimeLimitExceeded):
            app.tasks["t.busy"].delay(3).get(timeout=10)
        assert app.control.time_limit("t.nope", 1, reply=True) == [{"w1@ctl": {"error": "unknown task"}}]


def test_a_rate_limit_sent_to_one_worker_applies_there(app: Celery) -> None:
    with running(app, "w1@ctl"):
        reply = app.control.rate_limit("t.add", "1/s", destination=["w1@ctl"], reply=True)
        assert reply == [{"w1@ctl": {"ok": "new rate limit set successfully"}}]
        assert app.control.rate_limits() == {}  # not kept by the broker for every worker
        started = time.monotonic()
        results = [app.tasks["t.add"].delay(i, 0) for i in range(3)]
        assert [r.get(timeout=10) for r in results] == [0, 1, 2]
        assert time.monotonic() - started >= 1.5  # three tasks at one per second


def test_terminate_stops_a_running_task_at_once(app: Celery) -> None:
    with running(app):
        result = app.tasks["t.busy"].delay(30)
        assert eventually(lambda: app.control.inspect().active()["w1@ctl"])
        reply = app.control.terminate(result.id, reply=True)
        assert reply == [{"w1@ctl": {"ok": f"tasks {result.id} flagged as revoked"}}]
        with pytest.raises(TaskRevokedError):
            result.get(timeout=10)
        assert result.id in app.control.inspect().revoked()["w1@ctl"]


def test_a_ready_worker_has_its_control_channel_connected(app: Celery) -> None:
    with worker_running(app, "threads", "w1@ctl") as worker:
        control = worker.hooks.find(RemoteControl)
        assert control is not None and control.connected.is_set()


def test_shutdown_stops_the_worker(app: Celery) -> None:
    worker = Worker(app, pool="threads", concurrency=1, hostname="w1@ctl")
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    assert worker.ready.wait(10)
    wait_until_answering(app, "w1@ctl")
    assert app.control.shutdown(reply=True) == [{"w1@ctl": {"ok": "shutting down"}}]
    thread.join(20)
    assert not thread.is_alive()


def test_commands_of_your_own_are_answered(app: Celery) -> None:
    @inspect_command()
    def held_count(state) -> dict[str, int]:  # type: ignore[no-untyped-def]
        return {"ok": len(state.worker.held)}

    @control_command(args=[("n", int)], signature="[N=1]")
    def double(state, n: int = 1) -> dict[str, int]:  # type: ignore[no-untyped-def]
        return {"ok": 2 * n}

    try:
        with running(app):
            assert app.control.inspect()._request("held_count") == {"w1@ctl": {"ok": 0}}
            assert app.control.broadcast("double", {"n": 21}, reply=True) == [{"w1@ctl": {"ok": 42}}]
            (reply,) = app.control.broadcast("no_such_command", reply=True)
            assert reply == {"w1@ctl": {"error": "unknown command 'no_such_command'"}}
    finally:
        del COMMANDS["held_count"], COMMANDS["double"]


def test_a_malformed_control_message_is_ignored_and_the_worker_keeps_answering(app: Celery) -> None:
    from conveyor.brokers.base import Outgoing
    from conveyor.control import control_queue

    with running(app):
        for body in (b"", b"not json", b'{"command": 1}', b"[]", b'{"command": "ping", "ticket": "t"}'):
            app.broker.publish([Outgoing(control_queue("w1@ctl"), body)])
        assert app.control.ping() == [{"w1@ctl": {"ok": "pong"}}]


def test_the_autoscaler_grows_under_load_and_shrinks_when_idle(app: Celery, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(autoscale_module, "KEEPALIVE_SECONDS", 0.5)
    with running(app, concurrency=None, autoscale=(4, 1)) as worker:
        assert worker.concurrency == 1
        results = [app.tasks["t.sleep"].delay(1.5) for _ in range(6)]
        assert eventually(lambda: worker.concurrency == 4), f"did not grow: {worker.concurrency}"
        assert eventually(lambda: len(app.control.inspect().active()["w1@ctl"]) == 4)
        for result in results:
            result.get(timeout=20)
        assert eventually(lambda: worker.concurrency == 1), f"did not shrink: {worker.concurrency}"
        reply = app.control.autoscale(6, 2, reply=True)
        assert reply == [{"w1@ctl": {"ok": "autoscale now max=6 min=2"}}]
        assert eventually(lambda: worker.concurrency == 2)


def test_autoscale_says_when_it_is_not_enabled(app: Celery) -> None:
    with running(app):
        assert app.control.autoscale(4, 1, reply=True) == [{"w1@ctl": {"error": "Autoscale not enabled"}}]


def test_purge_empties_the_apps_queues(app: Celery) -> None:
    for i in range(3):
        app.tasks["t.add"].delay(i, i)
    assert app.control.purge() == 3
    assert app.control.purge() == 0
