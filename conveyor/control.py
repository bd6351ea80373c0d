"""Remote control: `app.control.inspect().active()`, `app.control.ping()`, `app.control.revoke(...)`.

Commands travel through the broker every worker already uses. Each worker
consumes a control queue of its own (`control_queue(hostname)`) on a thread
apart from its pool, so it answers while busy. A broadcast looks up the live
workers in the broker's worker registry (their heartbeats), filters them by
`destination`, and publishes one request to each; a worker writes its reply
under the request's ticket in the key-value namespace `CONTROL_REPLIES`,
which only the caller reads (replies are never broadcast). Replies have
Celery's shapes: a list of `{hostname: reply}`.

Revocations are kept by the broker (not in worker memory), so a worker
started later honours them too, for `worker_revoke_expires` seconds. A revoked
task that has not started never runs and ends REVOKED; with `terminate=True`
a running one is stopped (prefork: the signal goes to its process; threads:
TaskRevokedError is raised in its thread at the next Python bytecode) and
ends REVOKED.

Rate limits set at run time are kept by the broker too (namespace
`rate_limits`), override the task's configured `rate_limit` on every worker
within a second, and last until cleared (`rate_limit(name, None)`).
"""

from __future__ import annotations

import json
import logging
import signal as signals
import time
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from conveyor import states
from conveyor.brokers.base import Outgoing
from conveyor.config import parse_rate
from conveyor.exceptions import ImproperlyConfigured, TaskRevokedError
from conveyor.signing import BadSignature, unsealed

if TYPE_CHECKING:
    from conveyor.app import Conveyor


def signal_number(signal: str | int | None) -> int:
    """'SIGTERM', 'TERM', 'SIGKILL', 9, ... to a signal number (default SIGTERM)."""
    if signal is None:
        return int(signals.SIGTERM)
    if isinstance(signal, int):
        return signal
    name = signal.upper()
    name = name if name.startswith("SIG") else f"SIG{name}"
    try:
        return int(getattr(signals, name))
    except AttributeError:
        raise ImproperlyConfigured(f"unknown signal {signal!r}") from None


logger = logging.getLogger("conveyor.control")

#: State store key-value namespace of the rate limits set at run time (task name -> rate).
RATE_LIMITS = "rate_limits"
#: State store key-value namespace of control replies, by "<ticket> <hostname>".
CONTROL_REPLIES = "control_replies"
#: A caller looks for replies after this long, then twice as long each time, up to the most.
FIRST_REPLY_POLL_SECONDS = 0.0005
MOST_REPLY_POLL_SECONDS = 0.01


CONTROL_QUEUE_PREFIX = "conveyor.control."


def control_queue(hostname: str) -> str:
    """The queue a worker takes its control commands from."""
    return f"{CONTROL_QUEUE_PREFIX}{hostname}"


def task_queues(sizes: dict[str, int]) -> dict[str, int]:
    """Queue sizes without the workers' control queues (what `status` and the dashboard show)."""
    return {name: size for name, size in sizes.items() if not name.startswith(CONTROL_QUEUE_PREFIX)}


def reply_key(ticket: str, hostname: str) -> str:
    return f"{ticket} {hostname}"


def sealed(app: Conveyor, data: bytes) -> bytes:
    """Control state or a command as written to the broker: signed when signing is on."""
    signing = app.signing
    return signing.seal(data) if signing is not None else data


def trusted(app: Conveyor, data: bytes, what: str) -> bytes | None:
    """Control state or a command read from the broker, if its signature holds (signing on)."""
    signing = app.signing
    if signing is None:
        return unsealed(data)
    try:
        return signing.open(data)
    except BadSignature as exc:
        logger.warning("Ignoring %s with a bad signature: %s", what, exc)
        return None


def encode_request(command: str, arguments: dict[str, Any], ticket: str, reply: bool, expires: float) -> bytes:
    request = {"command": command, "arguments": arguments, "ticket": ticket, "reply": reply, "expires": expires}
    return json.dumps(request, default=repr).encode()


Reply = dict[str, Any]


class Control:
    """`app.control`: Celery's remote-control API."""

    def __init__(self, app: Conveyor) -> None:
        self.app = app

    def inspect(
        self, destination: str | Sequence[str] | None = None, timeout: float = 1.0, limit: int | None = None
    ) -> Inspect:
        """Ask workers what they are doing: `app.control.inspect().active()`."""
        return Inspect(self, destination, timeout, limit)

    def broadcast(
        self,
        command: str,
        arguments: dict[str, Any] | None = None,
        destination: str | Sequence[str] | None = None,
        reply: bool = False,
        timeout: float = 1.0,
        limit: int | None = None,
        callback: Callable[[dict[str, Reply]], None] | None = None,
        **extra: Any,
    ) -> list[dict[str, Reply]] | None:
        """Send `command` to the live workers (`destination`: only those hostnames); with `reply`,
        wait up to `timeout` seconds (or for `limit` replies) and return them as `[{hostname: reply}]`."""
        hostnames = sorted(self.app.state.workers())
        if destination is not None:
            wanted = {destination} if isinstance(destination, str) else set(destination)
            hostnames = [h for h in hostnames if h in wanted]
        ticket = uuid.uuid4().hex
        deadline = time.time() + timeout
        body = sealed(self.app, encode_request(command, dict(arguments or {}), ticket, reply, deadline))
        if hostnames:
            self.app.broker.publish([Outgoing(control_queue(h), body) for h in hostnames])
        if not reply:
            return None
        return self._replies(ticket, hostnames, deadline, limit, callback)

    def _replies(
        self,
        ticket: str,
        hostnames: list[str],
        deadline: float,
        limit: int | None,
        callback: Callable[[dict[str, Reply]], None] | None,
    ) -> list[dict[str, Reply]]:
        state, waiting = self.app.state, list(hostnames)
        replies: list[dict[str, Reply]] = []
        pause = FIRST_REPLY_POLL_SECONDS
        while waiting and time.time() < deadline:
            for hostname in list(waiting):
                raw = state.kv_get(CONTROL_REPLIES, reply_key(ticket, hostname))
                if raw is not None:
                    state.kv_swap(CONTROL_REPLIES, reply_key(ticket, hostname), raw, None)
                    reply = trusted(self.app, raw, f"a reply from {hostname}")
                    if reply is None:
                        continue  # forged: the worker's own reply may still come
                    waiting.remove(hostname)
                    replies.append({hostname: json.loads(reply)})
                    if callback is not None:
                        callback(replies[-1])
                    if limit is not None and len(replies) >= limit:
                        return replies
            if waiting:
                time.sleep(pause)
                pause = min(MOST_REPLY_POLL_SECONDS, 2 * pause)
        return replies

    def ping(
        self, destination: str | Sequence[str] | None = None, timeout: float = 1.0, **kwargs: Any
    ) -> list[dict[str, Reply]]:
        """`[{hostname: {"ok": "pong"}}]` from every worker that answers within `timeout`."""
        return self.broadcast("ping", destination=destination, reply=True, timeout=timeout, **kwargs) or []

    def shutdown(self, destination: str | Sequence[str] | None = None, **kwargs: Any) -> Any:
        """Warm shutdown of the workers (running tasks finish)."""
        return self.broadcast("shutdown", destination=destination, **kwargs)

    def pool_grow(self, n: int = 1, destination: str | Sequence[str] | None = None, **kwargs: Any) -> Any:
        return self.broadcast("pool_grow", {"n": n}, destination, **kwargs)

    def pool_shrink(self, n: int = 1, destination: str | Sequence[str] | None = None, **kwargs: Any) -> Any:
        return self.broadcast("pool_shrink", {"n": n}, destination, **kwargs)

    def autoscale(self, max: int, min: int, destination: str | Sequence[str] | None = None, **kwargs: Any) -> Any:  # noqa: A002 - Celery's names
        return self.broadcast("autoscale", {"max": max, "min": min}, destination, **kwargs)

    def add_consumer(
        self, queue: str, exchange: str | None = None, exchange_type: str = "direct", routing_key: str | None = None,
        options: dict[str, Any] | None = None, destination: str | Sequence[str] | None = None, **kwargs: Any,
    ) -> Any:  # fmt: skip
        """Workers start consuming `queue` (the exchange arguments are Celery's, for its signature)."""
        return self.broadcast("add_consumer", {"queue": queue}, destination, **kwargs)

    def cancel_consumer(self, queue: str, destination: str | Sequence[str] | None = None, **kwargs: Any) -> Any:
        """Workers stop consuming `queue`."""
        return self.broadcast("cancel_consumer", {"queue": queue}, destination, **kwargs)

    def time_limit(
        self, task_name: str, soft: float | None = None, hard: float | None = None,
        destination: str | Sequence[str] | None = None, **kwargs: Any,
    ) -> Any:  # fmt: skip
        """Set a task's soft and hard time limits on the workers, for the runs that start next."""
        return self.broadcast("time_limit", {"task_name": task_name, "soft": soft, "hard": hard}, destination, **kwargs)

    def purge(self) -> int:
        """Delete every message waiting in the app's queues; return how many."""
        return self.app.broker.purge(self.app.default_queues())

    discard_all = purge

    def terminate(
        self, task_id: str | Sequence[str], destination: str | Sequence[str] | None = None,
        signal: str | int | None = None, **kwargs: Any,
    ) -> Any:  # fmt: skip
        """Revoke tasks and stop those running (`revoke(..., terminate=True)`)."""
        return self.revoke(task_id, destination=destination, terminate=True, signal=signal, **kwargs)

    def rate_limit(
        self, task_name: str, rate_limit: str | float | None, destination: str | Sequence[str] | None = None,
        **kwargs: Any,
    ) -> Any:  # fmt: skip
        """Set a task's rate limit: "10/s", "100/m", "5/h", a number per second, or 0 for no limit;
        None clears it (the task's configured `rate_limit` applies again).

        Without `destination` it is kept by the broker and holds on every worker, those started
        later too; with one, only those workers change it, until they restart."""
        value = None
        if rate_limit is not None:
            try:
                parse_rate(rate_limit)
            except ValueError as exc:
                raise ImproperlyConfigured(f"rate limit for {task_name}: {exc}") from None
            value = sealed(self.app, str(rate_limit).encode())
        if destination is None:
            self.app.state.kv_put(RATE_LIMITS, task_name, value)
            if not kwargs.get("reply"):
                return None
        arguments = {"task_name": task_name, "rate_limit": rate_limit, "local": destination is not None}
        return self.broadcast("rate_limit", arguments, destination, **kwargs)

    def rate_limits(self) -> dict[str, str]:
        """The rate limits set at run time, by task name."""
        limits = {}
        for name, raw in self.app.state.kv_items(RATE_LIMITS).items():
            value = trusted(self.app, raw, f"the rate limit of {name}")
            if value is not None:
                limits[name] = value.decode(errors="replace")
        return limits

    def revoke(
        self, task_id: str | Sequence[str], destination: str | Sequence[str] | None = None, terminate: bool = False,
        signal: str | int | None = None, **kwargs: Any,
    ) -> Any:  # fmt: skip
        """Revoke one task or many: they will not run; with terminate=True running ones are stopped.

        Revocations are kept by the broker, so every worker honours them, those started later
        too (`destination` narrows only who replies, with `reply=True`)."""
        ids = [task_id] if isinstance(task_id, str) else list(task_id)
        info = json.dumps({"terminate": terminate, "signal": signal_number(signal), "at": time.time()}).encode()
        info = sealed(self.app, info)
        self.app.state.revoke(ids, info, time.time() + self.app.conf.worker_revoke_expires)
        # Callers waiting in get() learn at once; a task that already finished keeps its state.
        backend = self.app.backend
        stored = backend.read(ids)  # one round trip for all of them
        pending = [t for t in ids if t not in stored or backend.decode(stored[t])["status"] not in states.READY_STATES]
        if pending and not terminate:
            error = TaskRevokedError("revoked")
            backend.write([backend.make_update(t, states.REVOKED, error, history={"revoked": True}) for t in pending])
        if not kwargs.get("reply"):
            return None
        arguments = {"task_id": ids, "terminate": terminate, "signal": signal_number(signal)}
        return self.broadcast("revoke", arguments, destination, **kwargs)


class Inspect:
    """`app.control.inspect()`: each method returns `{hostname: reply}` (None when no worker
    replied), or, for one `destination` hostname, that worker's reply itself, as Celery does."""

    def __init__(
        self, control: Control, destination: str | Sequence[str] | None, timeout: float, limit: int | None
    ) -> None:
        self.control, self.destination, self.timeout, self.limit = control, destination, timeout, limit

    def _request(self, command: str, **arguments: Any) -> Any:
        replies = self.control.broadcast(
            command, arguments, self.destination, reply=True, timeout=self.timeout, limit=self.limit
        )
        if not replies:
            return None
        by_node = {hostname: reply for each in replies for hostname, reply in each.items()}
        if isinstance(self.destination, str):
            return by_node.get(self.destination)
        return by_node

    def ping(self) -> Any:
        return self._request("ping")

    def active(self, safe: bool | None = None) -> Any:
        """The tasks running now, by worker."""
        return self._request("active")

    def reserved(self, safe: bool | None = None) -> Any:
        """The tasks taken from the broker and waiting for a slot in the pool."""
        return self._request("reserved")

    def scheduled(self, safe: bool | None = None) -> Any:
        """Tasks with an eta held by the worker: none in Conveyor, where the broker holds them
        until due (`conveyor inspect` shows them nowhere; the broker's queues count them)."""
        return self._request("scheduled")

    def registered(self, *taskinfoitems: str) -> Any:
        """The task names each worker knows (with `taskinfoitems`: those attributes too)."""
        return self._request("registered", taskinfoitems=list(taskinfoitems))

    registered_tasks = registered

    def stats(self) -> Any:
        return self._request("stats")

    def revoked(self) -> Any:
        """The task ids each worker has seen revoked since it started."""
        return self._request("revoked")

    def active_queues(self) -> Any:
        return self._request("active_queues")

    def query_task(self, *ids: str | Sequence[str]) -> Any:
        """`{task_id: [state, request]}` for the given tasks a worker holds ("active" or "reserved")."""
        flat = [i for each in ids for i in ([each] if isinstance(each, str) else each)]
        return self._request("query_task", ids=flat)

    def conf(self, with_defaults: bool = False) -> Any:
        """Each worker's configuration (passwords hidden)."""
        return self._request("conf", with_defaults=with_defaults)

    def report(self) -> Any:
        return self._request("report")

    def clock(self) -> Any:
        return self._request("clock")
