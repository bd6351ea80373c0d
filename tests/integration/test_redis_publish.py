"""Single publishes pipelined across calls on Redis, and confirmed before anything acts on them.

A `delay()` on Redis sends its message and returns; the reply is read by a
later call of the same thread (after a pause or once SEND_WINDOW are owed),
by `Transport.confirm()`, by `AsyncResult.get()`, by a worker before a task that
published counts as done, or when the thread ends. These tests show that no
message is lost on the way: a killed connection, a restart while idle, a
script cache flushed; and that a refusal is raised, not waited for in vain.
"""

from __future__ import annotations

import threading
import time

import pytest
import redis

from conveyor import Celery, states
from conveyor.exceptions import BrokerError
from conveyor.messages import Envelope
from conveyor.pipelining import SEND_WINDOW
from conveyor.redisdb import PAUSE_SECONDS
from tests.contract.test_worker_contract import running
from tests.processes import RedisServer


def make_app(url: str, **settings: object) -> Celery:
    app = Celery("pipelined", broker=url, result_backend=url, **settings)

    @app.task(name="t.add")
    def add(x: int, y: int) -> int:
        return x + y

    return app


def ready_ids(url: str) -> set[bytes]:
    client = redis.Redis.from_url(url)
    try:
        priorities = client.zrange("conveyor:{celery}:priorities", 0, -1)
        return {i for p in priorities for i in client.lrange(b"conveyor:{celery}:ready:" + p, 0, -1)}
    finally:
        client.close()


def set_maxmemory(server: RedisServer, limit: int) -> None:
    """1 byte: Redis refuses every write (OOM); 0: no limit again."""
    client = redis.Redis.from_url(server.url)
    try:
        client.config_set("maxmemory", limit)
    finally:
        client.close()


def unconfirmed(app: Celery) -> int:
    return len(app.broker.redis.scripts.window().unconfirmed)  # type: ignore[attr-defined]


def test_single_publishes_are_pipelined_and_a_read_sees_them_all(server: RedisServer) -> None:
    """S5.1: back-to-back delay() calls owe at most SEND_WINDOW replies; a later read sees every message."""
    app = make_app(server.url)
    add = app.tasks["t.add"]
    count = SEND_WINDOW * 2 + 500
    most_owed = 0
    for i in range(count):
        add.delay(i, i)
        most_owed = max(most_owed, unconfirmed(app))
    assert 0 < most_owed <= SEND_WINDOW
    assert app.broker.queue_sizes(["celery"]) == {"celery": count}  # read your own writes
    assert unconfirmed(app) == 0
    app.close()


def test_confirm_publish_waits_for_each_reply(server: RedisServer) -> None:
    """The transport option confirm_publish=True: every publish is a round trip, nothing is owed."""
    app = make_app(server.url, broker_transport_options={"confirm_publish": True})
    for i in range(10):
        app.tasks["t.add"].delay(i, i)
        assert unconfirmed(app) == 0
    app.close()


def test_a_killed_connection_loses_no_published_message(server: RedisServer) -> None:
    """Messages owed a reply when the connection dies are sent again on a new one: at least once."""
    app = make_app(server.url)
    add = app.tasks["t.add"]
    admin = redis.Redis.from_url(server.url)
    sent = [add.delay(i, i).id for i in range(300)]
    admin.client_kill_filter(_type="normal", skipme=True)  # every client connection but this one
    sent += [add.delay(i, i).id for i in range(300, 600)]
    app.broker.confirm()
    stored = [Envelope.parse(body).task_id for body in admin.hvals("conveyor:{celery}:msgs")]
    assert set(stored) == set(sent)
    assert len(stored) - len(sent) <= SEND_WINDOW  # sent again: only those owed a reply at the loss
    admin.close()
    app.close()


def test_a_restart_while_idle_costs_the_next_publish_nothing(server: RedisServer) -> None:
    """Redis restarted while the producer was idle: the next delay() (even without retries) gets through."""
    app = make_app(server.url)
    add = app.tasks["t.add"]
    add.delay(1, 1)
    app.broker.confirm()
    server.stop()
    server.start()  # appendonly: the first message is still there
    add.apply_async((2, 2), retry=False)
    app.broker.confirm()
    assert len(ready_ids(server.url)) == 2
    app.close()


def test_a_restart_while_idle_costs_the_next_get_and_write_nothing(server: RedisServer) -> None:
    """The backend's calls on its thread's own connection (get()'s BLMOVE, result writes) find a
    connection Redis closed while idle and take a new one, as redis-py's pool would."""
    app = make_app(server.url)
    app.backend.store("t1", states.SUCCESS, 1)
    assert app.AsyncResult("t1").get(timeout=5) == 1
    server.stop()
    server.start()  # appendonly: the result is still there
    assert app.AsyncResult("t1").get(timeout=5) == 1
    server.stop()
    server.start()
    app.backend.store("t2", states.SUCCESS, 2)
    assert app.AsyncResult("t2").get(timeout=5) == 2
    app.close()


def test_a_flushed_script_cache_reloads_and_sends_again(server: RedisServer) -> None:
    """NOSCRIPT on a pipelined publish (SCRIPT FLUSH, a restarted replica): reloaded, sent again."""
    app = make_app(server.url)
    add = app.tasks["t.add"]
    for i in range(20):
        add.delay(i, i)
    redis.Redis.from_url(server.url).script_flush()
    for i in range(20):
        add.delay(i, i)
    app.broker.confirm()
    assert len(ready_ids(server.url)) == 40
    app.close()


def test_a_refused_publish_is_raised_by_get_instead_of_waited_for(server: RedisServer) -> None:
    """S5.3: Redis out of memory refuses the message: get() raises that at once, no wait until its timeout."""
    app = make_app(server.url)
    add = app.tasks["t.add"]
    add.delay(0, 0)
    app.broker.confirm()
    set_maxmemory(server, 1)
    result = add.delay(1, 2)  # sent, not yet confirmed
    with pytest.raises(BrokerError, match="maxmemory"):
        result.get(timeout=30)
    add.delay(3, 4)  # refused too, not known yet
    time.sleep(PAUSE_SECONDS * 2)  # after a pause, a call first reads what its thread owes
    with pytest.raises(BrokerError, match="maxmemory"):
        add.delay(5, 6)  # raises the refusal before its own message goes out
    strict = make_app(server.url, broker_transport_options={"confirm_publish": True})
    with pytest.raises(BrokerError, match="maxmemory"):
        strict.tasks["t.add"].delay(1, 2)  # raised by the call itself
    strict.close()
    set_maxmemory(server, 0)
    add.delay(7, 8)
    app.broker.confirm()
    assert len(ready_ids(server.url)) == 2  # (0, 0) and (7, 8): (5, 6) was never sent
    app.close()


def test_a_thread_that_ends_confirms_what_it_sent(server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    """A producer thread's owed replies are read as it ends: a refusal is logged, not silently dropped."""
    app = make_app(server.url)
    add = app.tasks["t.add"]

    def produce(n: int) -> None:
        for i in range(n):
            add.delay(i, i)

    thread = threading.Thread(target=produce, args=(25,))
    thread.start()
    thread.join()
    assert len(ready_ids(server.url)) == 25
    set_maxmemory(server, 1)
    with caplog.at_level("ERROR", logger="conveyor.redis"):
        thread = threading.Thread(target=produce, args=(3,))
        thread.start()
        thread.join()
        import gc

        gc.collect()  # the thread's local data goes with it
    assert any("unconfirmed" in r.getMessage() and "maxmemory" in r.getMessage() for r in caplog.records)
    pool = app.broker.redis.client.connection_pool  # type: ignore[attr-defined]
    assert len(pool._in_use_connections) == 0
    app.close()


def test_a_task_whose_publish_is_refused_fails_instead_of_succeeding(server: RedisServer, redis_store) -> None:  # type: ignore[no-untyped-def]
    """A task that sent a subtask Redis refused ends FAILURE naming the refusal (as a raising delay() would)."""
    url, options = redis_store
    app = Celery("pipelined", broker=server.url, result_backend=url, result_backend_transport_options=options)

    @app.task(name="t.noop")
    def noop() -> None:
        return None

    @app.task(name="t.spawn")
    def spawn() -> str:
        set_maxmemory(server, 1)
        noop.delay()
        return "sent"

    with running(app, "threads"):
        result = spawn.delay()
        with pytest.raises(BrokerError, match="maxmemory"):
            result.get(timeout=20)
        assert result.state == states.FAILURE
    set_maxmemory(server, 0)
    app.close()
