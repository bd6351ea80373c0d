"""The Redis broker and backend against real redis-server processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from conveyor import Celery, states
from conveyor.brokers.base import Outgoing
from conveyor.exceptions import BrokerConnectionError, BrokerError
from tests.processes import (
    E2E,
    RedisServer,
    flow_through_restart,
    free_port,
    wait_for_state,
)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def test_sigkill_mid_task_another_worker_completes_it_once(e2e: E2E, redis_store) -> None:  # type: ignore[no-untyped-def]
    """acks_late: the killed worker's lease lapses, another worker reclaims and completes: one SUCCESS."""
    url, options = redis_store
    e2e.write_app(lease=2, broker=url, options=options, task_acks_late=True)
    doomed = e2e.start_worker("-P", "prefork", "-c", "1", name="doomed")
    rescuer = e2e.start_worker("-P", "prefork", "-c", "1", name="rescuer")
    result = e2e.app.tasks["e2e.sleep"].apply_async((3,), queue="celery")
    wait_for_state(result, states.STARTED)
    started_by = result.scoreboard["history"][0]["worker"]
    (doomed if started_by == "doomed@e2e" else rescuer).kill_group()
    result.get(timeout=40)
    history = [(h["state"], h["worker"]) for h in result.scoreboard["history"]]
    assert [s for s, _ in history].count(states.SUCCESS) == 1
    assert history[0] == (states.STARTED, started_by) and history[-1][1] != started_by


def test_long_task_with_short_lease_on_a_live_worker_runs_once(e2e: E2E, redis_store) -> None:  # type: ignore[no-untyped-def]
    """A 60-second task with a 5-second lease: renewed all along, never redelivered."""
    url, options = redis_store
    e2e.write_app(lease=5, broker=url, options=options, task_acks_late=True)
    e2e.start_worker("-P", "prefork", "-c", "1", name="a")
    e2e.start_worker("-P", "prefork", "-c", "1", name="b")
    result = e2e.app.tasks["e2e.sleep"].delay(60)
    result.get(timeout=120)
    assert [h["state"] for h in result.scoreboard["history"]] == [states.STARTED, states.SUCCESS]


def test_a_thread_that_ends_gives_its_connection_back(redis_store) -> None:  # type: ignore[no-untyped-def]
    """Hot paths keep one connection per thread; threads that come and go must not each keep one open."""
    import gc
    import threading

    url, options = redis_store
    app = Celery("threads", broker=url, broker_transport_options=options)
    state = app.state
    for _ in range(20):
        thread = threading.Thread(target=state.revoked, args=(["some-task"],))
        thread.start()
        thread.join()
    gc.collect()
    pool = state.redis.client.connection_pool
    assert len(pool._in_use_connections) == 0  # every thread's connection is back in the pool
    assert len(pool._available_connections) <= 1  # and reused by the next thread, not one each
    app.close()


def test_worker_survives_a_redis_restart_and_every_task_succeeds_once(e2e: E2E, tmp_path: Path) -> None:
    """Restart redis-server (appendonly) while 10,000 tasks flow: each ends SUCCESS exactly once."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        e2e.write_app(broker=server.url, lease=30)
        worker = e2e.start_worker("-P", "threads", "-c", "4", name="survivor")
        for message in flow_through_restart(e2e, server, 10_000):
            history = [h["state"] for h in e2e.app.AsyncResult(message.id).scoreboard["history"]]
            assert history.count(states.SUCCESS) == 1, (message.id, history)
        assert "Cannot fetch from broker" in worker.log and "reachable again" in worker.log
        assert worker.log.count("Cannot fetch from broker") == 1
    finally:
        e2e.stop_all()
        server.stop()


def test_delayed_tasks_wait_in_redis_and_worker_memory_stays_flat(e2e: E2E, redis_store) -> None:  # type: ignore[no-untyped-def]
    """100,000 countdown tasks: held in Redis; the worker's RSS stays within 20 MB of idle."""
    url, options = redis_store
    e2e.write_app(broker=url, options=options)
    worker = e2e.start_worker("-P", "threads", "-c", "2", name="flat")
    time.sleep(1)
    idle = rss_kib(worker.process.pid)
    app = e2e.app
    eta = time.time() + 3600
    body = app.producer.message("e2e.add", (1, 2))[0].encode()
    for _ in range(100):
        app.broker.publish([Outgoing("celery", body, 0, eta)] * 1000)
    assert app.broker.queue_sizes(["celery"]) == {"celery": 100_000}
    assert app.tasks["e2e.add"].delay(2, 2).get(timeout=20) == 4  # the worker is awake and working
    time.sleep(2)
    assert rss_kib(worker.process.pid) - idle < 20 * 1024
    assert app.broker.queue_sizes(["celery"]) == {"celery": 100_000}


def test_countdown_runs_when_due(redis_store) -> None:  # type: ignore[no-untyped-def]
    url, options = redis_store
    app = Celery("t", broker=url, broker_transport_options={"lease_timeout": 5, **options})
    # Timed from before the publish: under load the publish itself may take a good part of the delay.
    due, published = time.time() + 0.5, time.monotonic()
    app.broker.publish([Outgoing("q", b"later", 0, due)])
    [delivery] = app.broker.fetch(["q"], 1, 5)
    assert delivery.body == b"later" and 0.45 < time.monotonic() - published < 3
    app.close()


def test_priority_zero_submitted_after_a_hundred_priority_nine_runs_next(e2e: E2E, redis_store) -> None:  # type: ignore[no-untyped-def]
    url, options = redis_store
    e2e.write_app(broker=url, options=options)
    e2e.start_worker("-P", "solo", "--prefetch-multiplier", "1", name="busy")
    app = e2e.app
    blocker = app.tasks["e2e.sleep"].delay(1)
    wait_for_state(blocker, states.STARTED)
    low = [app.tasks["e2e.add"].apply_async((i, 0), priority=9) for i in range(100)]
    urgent = app.tasks["e2e.add"].apply_async((0, 0), priority=0)
    urgent.get(timeout=20)
    low[-1].get(timeout=60)
    started = {r.id: r.scoreboard["history"][0]["timestamp"] for r in [*low, urgent]}
    assert started[urgent.id] < min(started[r.id] for r in low)
    order = sorted(low, key=lambda r: started[r.id])
    assert order == low  # FIFO within a priority


def test_publish_to_an_unreachable_redis_fails_fast_with_a_clear_error() -> None:
    """delay() never hangs a web request: retries per policy, then BrokerConnectionError."""
    app = Celery("t", broker=f"redis://127.0.0.1:{free_port()}/0")
    app.conf.task_publish_retry_policy = {"max_retries": 2, "interval_start": 0, "interval_step": 0.1}

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    started = time.monotonic()
    with pytest.raises(BrokerConnectionError, match="after 3 attempt"):
        add.delay(1, 2)
    assert time.monotonic() - started < 10
    app.close()


def test_results_expire_with_a_ttl_and_never_overwrite_success(redis_store) -> None:  # type: ignore[no-untyped-def]
    url, options = redis_store
    app = Celery("t", broker=url, result_backend=url, result_backend_transport_options=options, result_expires=60)
    backend = app.backend
    backend.store("t1", states.SUCCESS, 3)
    client = redis.Redis.from_url(url)
    ttl = client.pttl(f"{options['global_keyprefix']}conveyor:task:{{t1}}")
    assert 50_000 < ttl <= 60_000
    backend.store("t1", states.FAILURE, ValueError("late duplicate"))
    assert backend.get_meta("t1")["result"] == 3
    client.close()
    app.close()


@pytest.fixture
def cluster(tmp_path: Path):  # type: ignore[no-untyped-def]
    servers = [RedisServer(tmp_path / f"node{i}", "--cluster-enabled", "yes", "--cluster-config-file",
                           str(tmp_path / f"node{i}.conf")) for i in range(3)]  # fmt: skip
    for server in servers:
        server.start()
    try:
        subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{s.port}" for s in servers),
             "--cluster-replicas", "0", "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        client = redis.Redis(host="127.0.0.1", port=servers[0].port)
        deadline = time.monotonic() + 30
        while client.cluster("info").get("cluster_state") != "ok":
            assert time.monotonic() < deadline, "cluster did not come up"
            time.sleep(0.2)
        client.close()
        yield servers
    finally:
        for server in servers:
            server.stop()


TUTORIAL = Path(__file__).parents[2] / "examples" / "tutorial"


def test_redis_cluster_runs_the_tutorial_flow(e2e: E2E, cluster) -> None:  # type: ignore[no-untyped-def]
    """Three masters on loopback: every key of a queue shares a hash tag, so nothing is CROSSSLOT."""
    url = f"redis+cluster://127.0.0.1:{cluster[0].port}"
    config = (TUTORIAL / "config.py").read_text()
    config = config.replace(
        "    # broker_url = 'redis", f"    broker_url = '{url}'\n    result_backend = '{url}'\n    # x = 'redis", 1
    )
    (e2e.directory / "config.py").write_text(config)
    (e2e.directory / "task.py").write_text((TUTORIAL / "task.py").read_text())
    worker = e2e.start_worker("--pool=threads", "-c", "4", app="task", name="cluster")
    producer = subprocess.run(
        [sys.executable, "-c", "from task import add, priority_high, priority_low\n"
         "r = [add.delay(1, 2), priority_high.delay('x'), priority_low.delay('y')]\n"
         "print([x.get(timeout=60) for x in r])\n"
         "print(r[0].scoreboard['history'][-1]['state'])"],
        cwd=e2e.directory, capture_output=True, text=True, timeout=90, check=False,
    )  # fmt: skip
    assert producer.returncode == 0, producer.stderr
    assert producer.stdout.splitlines() == ["[3, 'priority_high', 'priority_low']", "SUCCESS"]
    assert "CROSSSLOT" not in worker.log
    worker.signal(signal.SIGTERM)
    assert worker.process.wait(30) == 0


def test_sentinel_failover_is_followed(e2e: E2E, tmp_path: Path) -> None:
    """sentinel:// with master_name: after the master dies and a replica is promoted, work goes on."""
    master = RedisServer(tmp_path / "master")
    master.start()
    replica = RedisServer(tmp_path / "replica", "--replicaof", "127.0.0.1", str(master.port))
    replica.start()
    sentinel_port = free_port()
    config = tmp_path / "sentinel.conf"
    config.write_text(
        f"port {sentinel_port}\nbind 127.0.0.1\nsentinel monitor main 127.0.0.1 {master.port} 1\n"
        "sentinel down-after-milliseconds main 1000\nsentinel failover-timeout main 5000\n"
    )
    sentinel = subprocess.Popen(
        ["redis-server", str(config), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        time.sleep(1.5)
        url = f"sentinel://127.0.0.1:{sentinel_port}/0"
        e2e.write_app(broker=url, options={"master_name": "main"})
        worker = e2e.start_worker("-P", "threads", name="follower")
        app = e2e.app
        assert app.tasks["e2e.add"].delay(1, 2).get(timeout=20) == 3
        master.stop()
        promoted = redis.Redis(host="127.0.0.1", port=replica.port)
        deadline = time.monotonic() + 30
        while promoted.info("replication")["role"] != "master":
            assert time.monotonic() < deadline, "sentinel did not promote the replica"
            time.sleep(0.2)
        promoted.close()
        deadline = time.monotonic() + 30
        while True:
            try:
                result = app.tasks["e2e.add"].delay(2, 3)
                break
            except BrokerConnectionError:
                assert time.monotonic() < deadline
                time.sleep(0.5)
        assert result.get(timeout=30) == 5
        assert worker.process.poll() is None
    finally:
        e2e.stop_all()
        sentinel.send_signal(signal.SIGTERM)
        sentinel.wait(10)
        replica.stop()
        master.stop()


@pytest.fixture
def tls_redis(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A redis-server of our own that speaks only TLS and wants a password."""
    run = lambda *cmd: subprocess.run(cmd, cwd=tmp_path, check=True, capture_output=True)  # noqa: E731
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
        "-days", "2", "-subj", "/CN=conveyor-test-ca")  # fmt: skip
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=127.0.0.1")  # fmt: skip
    (tmp_path / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    run("openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.crt", "-days", "2", "-extfile", "ext.cnf")  # fmt: skip
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--tls-cert-file", "server.crt", "--tls-key-file", "server.key", "--tls-ca-cert-file", "ca.crt",
         "--tls-auth-clients", "no", "--requirepass", "s3cret"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"rediss://:s3cret@127.0.0.1:{port}/0?ssl_ca_certs={tmp_path / 'ca.crt'}&ssl_cert_reqs=required"
    deadline = time.monotonic() + 10
    while True:
        try:
            redis.Redis.from_url(url).ping()
            break
        except redis.ConnectionError:
            assert time.monotonic() < deadline, "TLS redis-server did not start"
            time.sleep(0.1)
    yield url, port, tmp_path / "ca.crt"
    server.terminate()
    server.wait(10)


def test_tls_and_password_in_the_url(e2e: E2E, tls_redis) -> None:  # type: ignore[no-untyped-def]
    """rediss:// with a password and CA options: the whole flow over TLS; wrong secrets are clear errors."""
    url, port, _ca = tls_redis
    e2e.write_app(broker=url)
    e2e.start_worker("-P", "threads", name="tls")
    assert e2e.app.tasks["e2e.add"].delay(20, 22).get(timeout=20) == 42

    wrong_password = Celery("t", broker=url.replace("s3cret", "nope"))
    with pytest.raises(BrokerError, match="(?i)password|WRONGPASS|auth"):
        wrong_password.broker.queue_sizes(["celery"])
    wrong_password.close()
    untrusted = Celery("t", broker=f"rediss://:s3cret@127.0.0.1:{port}/0?ssl_cert_reqs=required")
    with pytest.raises(BrokerConnectionError, match="(?i)certificate"):
        untrusted.broker.queue_sizes(["celery"])
    untrusted.close()
