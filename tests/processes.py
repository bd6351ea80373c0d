"""Real `conveyor` worker processes started through the CLI, for e2e and integration tests.

Each test writes a small app module into its own temporary directory (with
its own SQLite file), starts workers in new sessions so a test can stop a
worker and its pool children by process group, and stops only those.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from conveyor import Celery

APP_TEMPLATE = """
import asyncio
import os
import time

from conveyor import Celery

app = Celery("e2eapp", broker={broker!r}, result_backend={backend!r})
app.conf.broker_transport_options = {{"lease_timeout": {lease}, "polling_interval": 0.5, **{options!r}}}
app.conf.result_backend_transport_options = {options!r}
app.conf.update({settings})


@app.task(name="e2e.add")
def add(x, y):
    return x + y


@app.task(name="e2e.sleep")
def sleep(seconds):
    time.sleep(seconds)
    return os.getpid()


@app.task(name="e2e.limited", rate_limit="10/s")
def limited(i):
    return time.time()


@app.task(name="e2e.size")
def size(data):
    return len(data)


@app.task(name="e2e.record_after", acks_late=True)
def record_after(seconds, path):
    time.sleep(seconds)
    with open(path, "a") as runs:
        runs.write(f"{{os.getpid()}}\\n")
    return os.getpid()


@app.task(name="e2e.die", acks_late=True, reject_on_worker_lost=True)
def die():
    os._exit(1)


@app.task(name="e2e.async_sleep")
async def async_sleep(seconds):
    await asyncio.sleep(seconds)
    return os.getpid()
"""


class Worker:
    def __init__(self, process: subprocess.Popen[str], log: Path) -> None:
        self.process = process
        self.log_path = log

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def wait_for_log(self, text: str, timeout: float = 20, count: int = 1) -> None:
        """Wait until `text` is in the log (`count` times)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log.count(text) >= count:
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not {count} time(s) in the worker log:\n{self.log}")

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def kill_group(self) -> None:
        """SIGKILL the worker and its pool children (its own process group)."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)


class E2E:
    """One test's directory, app module and the workers it started."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.workers: list[Worker] = []
        self.db = directory / "conveyor.db"
        self._app: Celery | None = None

    def write_app(
        self,
        lease: float = 30,
        broker: str | None = None,
        options: dict[str, str] | None = None,
        backend: str | None = None,
        **settings: object,
    ) -> None:
        """The app module: the test's SQLite file unless another broker URL (and options) is given;
        results where the broker is unless another backend is."""
        broker = broker or f"sqlite:///{self.db}"
        source = APP_TEMPLATE.format(
            broker=broker, backend=backend or broker, options=options or {}, lease=lease, settings=repr(settings)
        )
        (self.directory / "e2eapp.py").write_text(textwrap.dedent(source))

    def write_rabbitmq_app(self, **settings: object) -> None:
        """The app module on RabbitMQ (CONVEYOR_AMQP_URL, queue names of the test's own), with
        results and shared state in a SQLite file of the test's own."""
        from tests.conftest import store_url

        url, options = store_url("amqp", self.directory)
        self.write_app(broker=url, backend=options["state_url"], options=options, **settings)

    @property
    def app(self) -> Celery:
        """The app module imported into the test process (the producer side)."""
        if self._app is None:
            sys.path.insert(0, str(self.directory))
            sys.modules.pop("e2eapp", None)
            import e2eapp  # type: ignore[import-not-found]

            sys.path.remove(str(self.directory))
            self._app = e2eapp.app
        return self._app

    def cli(self, *args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:  # noqa: A002
        return subprocess.run(
            [sys.executable, "-m", "conveyor.cli", *args],
            cwd=self.directory, capture_output=True, text=True, timeout=60, check=check, input=input,
            env={**os.environ, "NO_COLOR": "1"},
        )  # fmt: skip

    def start_beat(self, *args: str, app: str = "e2eapp", name: str = "beat") -> Worker:
        return self.start_worker(*args, app=app, name=name, command=("beat", "-l", "info"), ready="beat: Starting")

    def start_worker(
        self,
        *args: str,
        app: str = "e2eapp",
        name: str = "w",
        command: tuple[str, ...] = ("worker", "-l", "info"),
        ready: str = "ready:",
    ) -> Worker:
        log = self.directory / f"{name}-{len(self.workers)}.log"
        handle = open(log, "w")  # noqa: SIM115 - kept open for the worker's lifetime
        identity = ("-n", f"{name}@e2e") if command[0] == "worker" else ()
        process = subprocess.Popen(
            [sys.executable, "-m", "conveyor.cli", "-A", app, *command, *identity, *args],
            cwd=self.directory, stdout=handle, stderr=subprocess.STDOUT, text=True, start_new_session=True,
            env={**os.environ, "NO_COLOR": "1"},
        )  # fmt: skip
        handle.close()
        worker = Worker(process, log)
        self.workers.append(worker)
        worker.wait_for_log(ready)
        return worker

    def stop_all(self) -> None:
        for worker in self.workers:
            if worker.process.poll() is None:
                with_group = worker.process.pid
                try:
                    os.killpg(with_group, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                worker.process.wait(10)
        if self._app is not None:
            self._app.close()


def children_of(pid: int) -> list[int]:
    """The live (not zombie) processes whose parent is `pid`, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state, ppid = stat.rpartition(")")[2].split()[:2]
        if int(ppid) == pid and state != "Z":
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def free_port() -> int:
    """A free loopback port whose +10000 (Redis Cluster's bus port) is free too."""
    import random
    import socket

    while True:
        port = random.randint(20_000, 50_000)
        try:
            for candidate in (port, port + 10_000):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port


class RedisServer:
    """A redis-server of the test's own, on a free loopback port, persisting to its directory."""

    def __init__(self, directory: Path, *extra: str) -> None:
        self.directory = directory
        self.port = free_port()
        self.extra = extra
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import shutil

        import redis

        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
             "--appendonly", "yes", "--appendfsync", "always", "--save", "", *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 10
        while True:
            try:
                if client.ping():
                    break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        client.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # a graceful shutdown flushes the AOF
            self.process.wait(20)
        self.process = None


def wait_for_state(result: Any, state: str, timeout: float = 20) -> None:
    """Poll an AsyncResult until it reaches `state` (tests only)."""
    deadline = time.monotonic() + timeout
    while result.state != state:
        assert time.monotonic() < deadline, f"{result.id} never reached {state} (is {result.state})"
        time.sleep(0.02)


class RabbitMQServer:
    """A RabbitMQ node of the test's own (name, ports and data directory), on loopback."""

    BINARY = "/usr/lib/rabbitmq/bin/rabbitmq-server"  # Debian's: runs as the caller, not as `rabbitmq`

    def __init__(self, directory: Path, management: bool = False) -> None:
        self.directory = directory
        self.port = free_port()
        #: With the management plugin, its HTTP API on a port of its own (statistics every 0.5 s).
        self.management_port = free_port() if management else None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    @property
    def management_url(self) -> str:
        return f"http://guest:guest@127.0.0.1:{self.management_port}/api/"

    def start(self, timeout: float = 60) -> None:
        import socket

        if not Path(self.BINARY).exists():
            raise RuntimeError(f"{self.BINARY} is not installed")
        self.directory.mkdir(parents=True, exist_ok=True)
        config = f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
        if self.management_port:
            config += (f"management.tcp.ip = 127.0.0.1\nmanagement.tcp.port = {self.management_port}\n"
                       "collect_statistics_interval = 500\n")  # fmt: skip
        (self.directory / "enabled_plugins").write_text("[rabbitmq_management].\n" if self.management_port else "[].\n")
        (self.directory / "rabbitmq.conf").write_text(config)
        env = {
            **os.environ,
            "RABBITMQ_NODENAME": f"conveyor{self.port}@localhost",
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.port + 10_000),
            "RABBITMQ_MNESIA_BASE": str(self.directory / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.directory / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.directory / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(self.directory / "rabbitmq"),
        }
        with (self.directory / "server.log").open("ab") as log:
            self.process = subprocess.Popen(
                [self.BINARY], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError as exc:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    log = (self.directory / "server.log").read_text()
                    raise RuntimeError(f"RabbitMQ did not start:\n{log}") from exc
                time.sleep(0.2)

    def stop(self) -> None:
        """A clean shutdown (durable queues and persistent messages are kept), by process group."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
            try:  # the Erlang VM of the group may outlive the script a moment
                os.killpg(self.process.pid, 0)
                time.sleep(0.5)
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process = None


def flow_through_restart(e2e: E2E, server: RedisServer | RabbitMQServer, tasks: int) -> list[Any]:
    """Publish `tasks` additions for a running worker, restart the server once 30% have gone
    through, and wait until every one has its right result; the messages sent."""
    from conveyor.brokers import Outgoing

    app = e2e.app
    messages = [app.producer.message("e2e.add", (i, i))[0] for i in range(tasks)]
    for offset in range(0, len(messages), 500):
        app.broker.publish([Outgoing("celery", m.encode()) for m in messages[offset : offset + 500]])
    deadline = time.monotonic() + 60
    while app.broker.queue_sizes(["celery"])["celery"] > tasks * 0.7:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    server.stop()
    time.sleep(1.0)
    server.start()
    for message in messages[::-1]:
        assert app.AsyncResult(message.id).get(timeout=120) == message.args[0] * 2
    time.sleep(1)  # anything run twice has written its second SUCCESS by now
    return messages
