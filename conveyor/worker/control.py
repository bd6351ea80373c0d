"""Remote control in the worker: Celery's control and inspect commands, and your own.

The worker takes commands from its control queue (`control.control_queue`)
on a thread of its own, with a broker connection of its own: a busy pool or
a long batch does not delay the answer. Replies go to the caller alone
(`control.py`). Register a command of your own as in Celery:

    from conveyor.worker.control import control_command, inspect_command

    @inspect_command()
    def current_load(state):
        return {"ok": len(state.worker.held)}

    @control_command(args=[("n", int)], signature="[N=1]")
    def drain_cache(state, n=1):
        ...
        return {"ok": f"dropped {n}"}

A command gets `state` (with `.app`, `.hostname`, `.worker`, `.consumer`)
and the caller's arguments, and returns the reply: a dict, by convention
`{"ok": ...}` or `{"error": ...}`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import resource
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from conveyor import __version__
from conveyor.control import CONTROL_REPLIES, control_queue, reply_key, sealed, signal_number, trusted
from conveyor.exceptions import BrokerError
from conveyor.urls import redacted
from conveyor.worker.autoscale import Autoscaler
from conveyor.worker.hooks import Held, Hook
from conveyor.worker.rate_limits import RateLimits
from conveyor.worker.revocations import Revocations

if TYPE_CHECKING:
    from conveyor.worker.worker import Worker

logger = logging.getLogger("conveyor.worker")

Handler = Callable[..., Any]

#: Longest a starting worker waits for its control connection before it reports ready.
CONNECT_SECONDS = 5.0


@dataclass(frozen=True)
class Command:
    handler: Handler
    kind: str
    """"control" (changes something) or "inspect" (reads)."""
    args: tuple[tuple[str, Callable[[str], Any]], ...] = ()
    """Positional arguments of the command line, with their types."""
    signature: str | None = None
    help: str = ""


#: Every command a worker answers, by name.
COMMANDS: dict[str, Command] = {}


def _register(kind: str, name: str | None, args: Any, signature: str | None) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        doc = (handler.__doc__ or "").strip().splitlines()
        COMMANDS[name or handler.__name__] = Command(handler, kind, tuple(args or ()), signature, doc[0] if doc else "")
        return handler

    return register


def control_command(
    name: str | None = None, args: Any = None, signature: str | None = None, **options: Any
) -> Callable[[Handler], Handler]:
    """Register a command that changes something in the worker (`app.control.broadcast(name)`)."""
    return _register("control", name, args, signature)


def inspect_command(
    name: str | None = None, args: Any = None, signature: str | None = None, **options: Any
) -> Callable[[Handler], Handler]:
    """Register a command that reports on the worker (`app.control.inspect()._request(name)`)."""
    return _register("inspect", name, args, signature)


@dataclass
class State:
    """What a command gets: Celery's `state`, with `consumer` the worker itself."""

    worker: Worker
    started: float = field(default_factory=time.monotonic)
    clock: int = 0

    @property
    def app(self) -> Any:
        return self.worker.app

    @property
    def hostname(self) -> str:
        return self.worker.hostname

    @property
    def consumer(self) -> Worker:
        return self.worker


class RemoteControl(Hook):
    """Answers the commands sent to this worker's control queue."""

    def __init__(self) -> None:
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="conveyor-control", daemon=True)
        # The thread closes its broker as it ends, and stop() wakes it through that broker:
        # never both at once (a connection closed under a caller leaves it waiting for a reply).
        self._broker_lock = threading.Lock()
        self._broker_closed = False
        self.connected = threading.Event()
        """Set once the control thread's first look at its queue is done (or failed): the worker
        is ready after it."""

    def start(self, worker: Worker) -> None:
        self.state = State(worker)
        self.queue = control_queue(worker.hostname)
        # Commands sent to an earlier worker of this name are past their deadline: not acted on.
        self.broker = worker.app.new_broker()
        self._thread.start()
        # Ready means answering: a probe sent as the worker starts is not left to wait out its
        # timeout while the control connection is still being opened (a RabbitMQ one takes a while).
        self.connected.wait(CONNECT_SECONDS)

    def stop(self) -> None:
        # Not joined: the thread ends within a fetch's timeout, and closes its connection.
        self._stopped.set()
        with self._broker_lock:
            if self._thread.is_alive() and not self._broker_closed:
                with contextlib.suppress(Exception):  # an unreachable broker: the fetch times out anyway
                    self.broker.transport.interrupt()

    def _serve(self) -> None:
        failures = 0
        timeout = 0.0  # the first look connects and returns at once (start() waits for it)
        try:
            while not self._stopped.is_set():
                try:
                    deliveries = self.broker.transport.fetch([self.queue], 10, timeout)
                    if deliveries:
                        self.broker.transport.ack(deliveries)
                except BrokerError as exc:
                    failures += 1
                    if failures == 1:
                        logger.warning("Remote control cannot reach the broker (trying again): %s", exc)
                    self.connected.set()  # the worker starts all the same; this thread keeps trying
                    self._stopped.wait(1.0)
                    continue
                self.connected.set()
                timeout = 1.0
                if failures:
                    logger.info("Remote control reaches the broker again")
                    failures = 0
                for delivery in deliveries:
                    self._answer(delivery.body)
        finally:
            self.connected.set()
            with self._broker_lock:
                self._broker_closed = True
                self.broker.close()

    def _answer(self, body: bytes) -> None:
        opened = trusted(self.state.app, body, "a control command")
        if opened is None:
            return
        try:
            request = json.loads(opened)
            command, arguments = str(request["command"]), dict(request.get("arguments") or {})
            ticket, expires = str(request["ticket"]), float(request["expires"])
        except (ValueError, TypeError, KeyError) as exc:
            logger.error("Ignoring a malformed control command: %s", exc)
            return
        if time.time() > expires:
            return  # its caller stopped waiting: acting now would surprise it
        self.state.clock += 1
        reply = self.dispatch(command, arguments)
        if request.get("reply") and time.time() <= expires:
            try:
                value = sealed(self.state.app, json.dumps(reply, default=repr).encode())
                self.broker.state.kv_put(CONTROL_REPLIES, reply_key(ticket, self.state.hostname), value)
            except BrokerError as exc:
                logger.warning("Could not reply to %s: %s", command, exc)

    def dispatch(self, command: str, arguments: dict[str, Any]) -> Any:
        """Run a command; its reply, or {"error": why}."""
        entry = COMMANDS.get(command)
        if entry is None:
            logger.warning("Ignoring unknown remote control command %r", command)
            return {"error": f"unknown command {command!r}"}
        logger.debug("Remote control command %s(%s)", command, arguments)
        try:
            return entry.handler(self.state, **arguments)
        except Exception as exc:
            logger.exception("Remote control command %s failed", command)
            return {"error": f"{type(exc).__name__}: {exc}"}


# -- the requests a worker holds, in Celery's shape -----------------------------------------
def request_info(held: Held) -> dict[str, Any]:
    message = held.job.message
    return {
        "id": message.id, "name": message.task, "args": list(message.args), "kwargs": dict(message.kwargs),
        "type": message.task, "hostname": held.job.hostname, "time_start": held.started_at,
        "acknowledged": held.acked, "worker_pid": held.pid,
        "delivery_info": {"exchange": "", "routing_key": held.delivery.queue, "priority": message.priority,
                          "redelivered": held.delivery.redelivered},
    }  # fmt: skip


# -- inspect -------------------------------------------------------------------------------------
@inspect_command()
def ping(state: State) -> dict[str, Any]:
    """Whether the worker answers."""
    return {"ok": "pong"}


@inspect_command()
def active(state: State, safe: bool | None = None) -> list[dict[str, Any]]:
    """The tasks running now."""
    return [request_info(h) for h in state.worker.ledger.running()]


@inspect_command()
def reserved(state: State, safe: bool | None = None) -> list[dict[str, Any]]:
    """The tasks taken from the broker that wait for a slot in the pool."""
    return [request_info(h) for h in list(state.worker.held.values()) if not h.started]


@inspect_command()
def scheduled(state: State, safe: bool | None = None) -> list[dict[str, Any]]:
    """Tasks with an eta held by the worker: none, the broker holds them until due."""
    return []


@inspect_command()
def registered(state: State, taskinfoitems: list[str] | None = None) -> list[str]:
    """The task names this worker knows."""
    tasks = state.app.tasks
    names = sorted(name for name in tasks if not name.startswith("conveyor."))
    if not taskinfoitems:
        return names
    described = []
    for name in names:
        fields = [
            f"{item}={getattr(tasks[name], item)}"
            for item in taskinfoitems
            if getattr(tasks[name], item, None) is not None
        ]
        described.append(f"{name} [{' '.join(fields)}]" if fields else name)
    return described


@inspect_command()
def stats(state: State) -> dict[str, Any]:
    """Pool, prefetch, totals, resource usage and uptime."""
    worker, usage = state.worker, resource.getrusage(resource.RUSAGE_SELF)
    conf = state.app.conf
    assert worker.pool is not None
    return {
        "broker": {"url": redacted(state.app.broker_url), "transport": state.app.broker_url.split(":", 1)[0]},
        "clock": str(state.clock), "pid": os.getpid(), "uptime": int(time.monotonic() - state.started),
        "prefetch_count": worker.prefetch, "total": dict(worker.ledger.totals),
        "pool": {
            "implementation": worker.pool_name, "max-concurrency": worker.concurrency,
            "processes": worker.pool.processes(), "max-tasks-per-child": conf.worker_max_tasks_per_child,
            "put-guarded-by-semaphore": False, "timeouts": [conf.task_soft_time_limit or 0, conf.task_time_limit or 0],
        },
        "rusage": {"utime": usage.ru_utime, "stime": usage.ru_stime, "maxrss": usage.ru_maxrss,
                   "minflt": usage.ru_minflt, "majflt": usage.ru_majflt, "nvcsw": usage.ru_nvcsw,
                   "nivcsw": usage.ru_nivcsw},
    }  # fmt: skip


@inspect_command()
def revoked(state: State) -> list[str]:
    """The task ids this worker has seen revoked since it started."""
    revocations = state.worker.hooks.find(Revocations)
    return list(revocations.seen) if revocations is not None else []


@inspect_command()
def active_queues(state: State) -> list[dict[str, Any]]:
    """The queues this worker consumes."""
    return [
        {"name": queue, "exchange": {"name": queue, "type": "direct"}, "routing_key": queue, "durable": True,
         "exclusive": False, "auto_delete": False, "no_ack": False, "alias": None, "bindings": []}
        for queue in state.worker.queues
    ]  # fmt: skip


@inspect_command(args=[("ids", str)], signature="[id1 [id2 [... [idN]]]]")
def query_task(state: State, ids: list[str] | str = ()) -> dict[str, Any]:  # type: ignore[assignment]
    """What this worker holds of the given tasks: {id: [active|reserved, request]}."""
    wanted = {ids} if isinstance(ids, str) else set(ids)
    return {
        h.job.message.id: ["active" if h.started else "reserved", request_info(h)]
        for h in list(state.worker.held.values())
        if h.job.message.id in wanted
    }


@inspect_command()
def conf(state: State, with_defaults: bool = False) -> dict[str, Any]:
    """The worker's configuration, passwords hidden (with_defaults: every setting, else those set)."""
    settings = state.app.conf
    values = settings.as_dict() if with_defaults else settings.changed()
    return {name: redact_setting(name, value) for name, value in sorted(values.items())}


def redact_setting(name: str, value: Any) -> Any:
    """A setting's value fit to show: secrets starred, passwords in URLs hidden."""
    if isinstance(value, str):
        if any(word in name for word in ("password", "secret", "key")) and "://" not in value and value:
            return "********"
        return redacted(value)
    if isinstance(value, dict):
        return {str(k): redact_setting(str(k), v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_setting(name, v) for v in value]
    return value if isinstance(value, (int, float, bool)) or value is None else repr(value)


@inspect_command()
def report(state: State) -> dict[str, Any]:
    """A few lines on the worker and its environment."""
    worker = state.worker
    lines = [
        f"software -> conveyor:{__version__} py:{platform.python_version()}",
        f"platform -> system:{platform.system()} arch:{platform.machine()} imp:{platform.python_implementation()}",
        f"hostname -> {worker.hostname}",
        f"broker -> {redacted(state.app.broker_url)}",
        f"pool -> {worker.pool_name} concurrency:{worker.concurrency} prefetch:{worker.prefetch}",
        f"queues -> {', '.join(worker.queues)}",
    ]
    return {"ok": "\n".join(lines)}


@inspect_command()
def clock(state: State) -> dict[str, Any]:
    """How many control commands this worker has handled."""
    return {"clock": state.clock}


# -- control -------------------------------------------------------------------------------------
@control_command()
def shutdown(state: State, msg: str = "Got shutdown from remote") -> dict[str, Any]:
    """Warm shutdown: running tasks finish."""
    logger.warning(msg)
    state.worker.stop()
    return {"ok": "shutting down"}


@control_command(args=[("n", int)], signature="[N=1]")
def pool_grow(state: State, n: int = 1) -> dict[str, Any]:
    """Run N more tasks at once."""
    state.worker.resize(state.worker.concurrency + int(n))
    return {"ok": "pool will grow"}


@control_command(args=[("n", int)], signature="[N=1]")
def pool_shrink(state: State, n: int = 1) -> dict[str, Any]:
    """Run N fewer tasks at once (running ones finish)."""
    state.worker.resize(max(1, state.worker.concurrency - int(n)))
    return {"ok": "pool will shrink"}


@control_command(args=[("max", int), ("min", int)], signature="[max [min]]")
def autoscale(state: State, max: int, min: int | None = None) -> dict[str, Any]:  # noqa: A002 - Celery's names
    """Change the bounds of the autoscaler (`worker --autoscale`)."""
    scaler = state.worker.hooks.find(Autoscaler)
    if scaler is None:
        return {"error": "Autoscale not enabled"}
    scaler.bounds(int(max), int(min if min is not None else scaler.minimum))
    return {"ok": f"autoscale now max={scaler.maximum} min={scaler.minimum}"}


@control_command(args=[("queue", str)], signature="<queue>")
def add_consumer(state: State, queue: str, **options: Any) -> dict[str, Any]:
    """Start consuming a queue."""
    if queue in state.worker.queues:
        return {"ok": f"already consuming from {queue!r}"}
    state.worker.consume([*state.worker.queues, queue])
    return {"ok": f"add consumer {queue}"}


@control_command(args=[("queue", str)], signature="<queue>")
def cancel_consumer(state: State, queue: str, **options: Any) -> dict[str, Any]:
    """Stop consuming a queue."""
    if queue not in state.worker.queues:
        return {"error": f"not consuming from {queue!r}"}
    state.worker.consume([q for q in state.worker.queues if q != queue])
    return {"ok": f"no longer consuming from {queue!r}"}


@control_command(
    args=[("task_name", str), ("soft", float), ("hard", float)], signature="<task_name> <soft_secs> [hard_secs]"
)
def time_limit(state: State, task_name: str, soft: float | None = None, hard: float | None = None) -> dict[str, Any]:
    """Set a task's soft and hard time limits for the runs that start next."""
    task = state.app.tasks.get(task_name)
    if task is None:
        return {"error": "unknown task"}
    task.soft_time_limit, task.time_limit = soft, hard
    logger.warning("New time limits for tasks of type %s: soft=%s hard=%s", task_name, soft, hard)
    return {"ok": "time limits set successfully"}


@control_command(
    args=[("task_name", str), ("rate_limit", str)], signature="<task_name> <rate_limit (e.g., 5/s | 5/m | 5/h)>"
)
def rate_limit(state: State, task_name: str, rate_limit: str | float | None, local: bool = True) -> dict[str, Any]:
    """Set a task's rate limit on this worker."""
    limits = state.worker.hooks.find(RateLimits)
    if limits is None:
        return {"error": "rate limits are disabled on this worker (worker_disable_rate_limits)"}
    if task_name not in state.app.tasks:
        return {"error": f"unknown task {task_name!r}"}
    if local:
        limits.override(task_name, None if rate_limit is None else str(rate_limit))
    else:
        limits.tick(0.0)  # the broker has it: read it now rather than at the next tick
    return {"ok": "new rate limit set successfully"}


@control_command(args=[("task_id", str)], signature="[id1 [id2 [... [idN]]]]")
def revoke(
    state: State, task_id: list[str] | str, terminate: bool = False, signal: int | str | None = None
) -> dict[str, Any]:
    """Revoke tasks (the broker keeps the revocation); with terminate, stop those running here now."""
    ids = [task_id] if isinstance(task_id, str) else list(task_id)
    revocations = state.worker.hooks.find(Revocations)
    if revocations is not None:
        revocations.seen.extend(ids)
    if terminate:
        signum = signal_number(signal)
        for held in state.worker.ledger.running():
            if held.job.message.id in ids:
                state.worker.terminate(held.job.id, signum)
    return {"ok": f"tasks {', '.join(ids)} flagged as revoked"}


@control_command(args=[("task_id", str)], signature="[id1 [id2 [... [idN]]]]")
def terminate(state: State, signal: int | str | None = None, task_id: list[str] | str = ()) -> dict[str, Any]:  # type: ignore[assignment]
    """Stop running tasks with a signal."""
    reply: dict[str, Any] = revoke(state, task_id, terminate=True, signal=signal)
    return reply
