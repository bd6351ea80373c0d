"""Flower's REST API, with Flower's paths, parameters and response shapes, so scripts and
Grafana dashboards written for Flower work against `conveyor flower`.

Workers are asked through remote control (`app.control`); tasks come from the
workers' monitoring events (`dashboard/history.py`) and, for results, from the
result backend. Routes that change something are POSTs, which the dashboard's
guard refuses without authentication unless explicitly allowed.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from conveyor import states
from conveyor.control import task_queues
from conveyor.dashboard.history import TaskHistory, complete, select
from conveyor.exceptions import ConveyorError, NotRegistered

if TYPE_CHECKING:
    from conveyor.app import Conveyor

#: Inspect calls that make up a worker's record in `/api/workers`, as Flower makes it.
INSPECT_METHODS = ("stats", "active_queues", "registered", "scheduled", "active", "reserved", "revoked", "conf")
#: Flower's format for `eta` and `expires` given as strings.
DATE_FORMAT = "%Y-%m-%d %H:%M:%S.%f"


class HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _json_body(request_body: bytes) -> tuple[list[Any], dict[str, Any], dict[str, Any]]:
    """A task call's body, as Flower reads it: {"args": [...], "kwargs": {...}, apply_async options...}."""
    try:
        options = json.loads(request_body) if request_body else {}
    except ValueError as exc:
        raise HTTPError(400, str(exc)) from None
    if not isinstance(options, dict):
        raise HTTPError(400, "invalid options")
    args, kwargs = options.pop("args", []), options.pop("kwargs", {})
    if not isinstance(args, (list, tuple)):
        raise HTTPError(400, "args must be an array")
    if not isinstance(kwargs, dict):
        raise HTTPError(400, "kwargs must be an object")
    try:
        if "eta" in options:
            options["eta"] = datetime.strptime(options["eta"], DATE_FORMAT)
        if "countdown" in options:
            options["countdown"] = float(options["countdown"])
        if "expires" in options:
            try:
                options["expires"] = float(options["expires"])
            except ValueError:
                options["expires"] = datetime.strptime(options["expires"], DATE_FORMAT)
    except (TypeError, ValueError):
        raise HTTPError(400, "Invalid option") from None
    return list(args), kwargs, options


def _arguments(request: Request, body: bytes) -> dict[str, str]:
    """A form body's fields (application/x-www-form-urlencoded, as Flower's clients send) and the
    query's, the query's winning."""
    form = parse_qs(body.decode("utf-8", "replace"))
    return {**{k: v[-1] for k, v in form.items()}, **dict(request.query_params)}


def _safe(value: Any) -> Any:
    """The value if JSON can carry it, else its repr (as Flower answers)."""
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)
    return value


class FlowerMetrics:
    """Flower's Prometheus metrics, counted from the events the dashboard reads while it runs
    (as Flower counts the events it receives): `flower_events_total`,
    `flower_task_runtime_seconds`, `flower_task_prefetch_time_seconds`, and per worker
    `flower_worker_online`, `flower_worker_number_of_currently_executing_tasks` and
    `flower_worker_prefetched_tasks`."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.events = Counter("flower_events", "Number of events", ["worker", "type", "task"], registry=self.registry)
        self.runtime = Histogram(
            "flower_task_runtime_seconds", "Task runtime", ["worker", "task"], registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, float("inf")),
        )  # fmt: skip
        self.prefetch_time = Gauge(
            "flower_task_prefetch_time_seconds", "The time the task spent waiting at the worker to be executed",
            ["worker", "task"], registry=self.registry,
        )  # fmt: skip
        self.prefetched = Gauge(
            "flower_worker_prefetched_tasks", "Number of tasks of given type prefetched at a worker",
            ["worker", "task"], registry=self.registry,
        )  # fmt: skip
        self.online = Gauge("flower_worker_online", "Worker online status", ["worker"], registry=self.registry)
        self.executing = Gauge(
            "flower_worker_number_of_currently_executing_tasks", "Number of tasks currently executing at a worker",
            ["worker"], registry=self.registry,
        )  # fmt: skip
        self._received: dict[str, float] = {}

    def count(self, events: list[dict[str, Any]]) -> None:
        """Count new events (oldest first)."""
        for event in events:
            try:
                kind, worker, task = event["type"], str(event.get("hostname", "")), str(event.get("name", ""))
            except (KeyError, TypeError):
                continue
            self.events.labels(worker, kind, task).inc()
            received, started = event.get("received"), event.get("started")
            if isinstance(received, (int, float)) and isinstance(started, (int, float)):
                # A short task's end carries its arrival and start (worker/events.py).
                self.prefetch_time.labels(worker, task).set(max(0.0, started - received))
            if kind == "task-received":
                self._received[str(event.get("uuid"))] = float(event.get("timestamp") or 0)
                if len(self._received) > 100_000:
                    self._received.clear()  # bounded memory: a few prefetch times go unmeasured
            elif kind == "task-started" and event.get("uuid") in self._received:
                waited = float(event.get("timestamp") or 0) - self._received.pop(event["uuid"])
                self.prefetch_time.labels(worker, task).set(max(0.0, waited))
            elif kind == "task-succeeded" and isinstance(event.get("runtime"), (int, float)):
                self.runtime.labels(worker, task).observe(event["runtime"])

    def update_workers(self, workers: list[dict[str, Any]], tasks: dict[str, dict[str, Any]]) -> None:
        """Per-worker gauges from the heartbeats and the latest state of each task."""
        self.online.clear()
        self.executing.clear()
        self.prefetched.clear()
        for worker in workers:
            self.online.labels(worker["hostname"]).set(1)
            self.executing.labels(worker["hostname"]).set(worker.get("running") or 0)
        waiting: dict[tuple[str, str], int] = {}
        for task in tasks.values():
            if task.get("state") == "RECEIVED" and task.get("worker"):
                key = (str(task["worker"]), str(task.get("name")))
                waiting[key] = waiting.get(key, 0) + 1
        for (worker_name, name), count in waiting.items():
            self.prefetched.labels(worker_name, name).set(count)


Handler = Callable[["FlowerAPI", Request, bytes], Any]


def endpoint(handler: Handler) -> Callable[[FlowerAPI, Request], Awaitable[Response]]:
    """A route from a blocking handler (it talks to the broker): run off the event loop, given
    the request's body; its value as JSON, its errors as Flower's status codes."""

    @functools.wraps(handler)
    async def serve(self: FlowerAPI, request: Request) -> Response:
        body = await request.body()
        try:
            result = await run_in_threadpool(handler, self, request, body)
        except HTTPError as exc:
            return PlainTextResponse(exc.message, status_code=exc.status)
        except ConveyorError as exc:
            return PlainTextResponse(str(exc), status_code=503)
        return result if isinstance(result, Response) else JSONResponse(json.loads(json.dumps(result, default=repr)))

    return serve


class FlowerAPI:
    def __init__(self, app: Conveyor, history: TaskHistory, inspect_timeout: float = 1.0) -> None:
        self.app = app
        self.history = history
        self.inspect_timeout = inspect_timeout

    def routes(self) -> list[Route]:
        post = ["POST"]
        return [
            Route("/api/workers", self.workers),
            Route("/api/worker/shutdown/{name}", self.shutdown, methods=post),
            Route("/api/worker/pool/restart/{name}", self.pool_restart, methods=post),
            Route("/api/worker/pool/grow/{name}", self.pool_grow, methods=post),
            Route("/api/worker/pool/shrink/{name}", self.pool_shrink, methods=post),
            Route("/api/worker/pool/autoscale/{name}", self.autoscale, methods=post),
            Route("/api/worker/queue/add-consumer/{name}", self.add_consumer, methods=post),
            Route("/api/worker/queue/cancel-consumer/{name}", self.cancel_consumer, methods=post),
            Route("/api/tasks", self.tasks),
            Route("/api/task/types", self.task_types),
            Route("/api/queues/length", self.queue_lengths),
            Route("/api/task/info/{task_id}", self.task_info),
            Route("/api/task/result/{task_id}", self.task_result),
            Route("/api/task/apply/{name}", self.apply, methods=post),
            Route("/api/task/async-apply/{name}", self.async_apply, methods=post),
            Route("/api/task/send-task/{name}", self.send_task, methods=post),
            Route("/api/task/abort/{task_id}", self.abort, methods=post),
            Route("/api/task/revoke/{task_id}", self.revoke, methods=post),
            Route("/api/task/timeout/{name}", self.timeout, methods=post),
            Route("/api/task/rate-limit/{name}", self.rate_limit, methods=post),
            Route("/healthcheck", self.healthcheck),
        ]

    # -- plumbing ------------------------------------------------------------------------------
    def _live(self) -> set[str]:
        return set(self.app.state.workers())

    def _known_worker(self, name: str) -> str:
        if name not in self._live():
            raise HTTPError(404, f"Unknown worker '{name}'")
        return name

    def _command(self, name: str, command: str, arguments: dict[str, Any], failed: str) -> Any:
        """A control command to one worker; its reply, or 403 with Flower's failure text."""
        replies = self.app.control.broadcast(command, arguments, [name], reply=True, timeout=self.inspect_timeout)
        reply = (replies or [{}])[0].get(name)
        if isinstance(reply, dict) and "ok" in reply:
            return reply
        reason = reply.get("error", "Unknown reason") if isinstance(reply, dict) else "no reply"
        raise HTTPError(403, f"{failed}: {reason}")

    @staticmethod
    def _int(request: Request, name: str, default: int | None = None) -> int:
        value = request.query_params.get(name)
        if value is None:
            if default is None:
                raise HTTPError(400, f"Missing argument {name}")
            return default
        try:
            return int(value)
        except ValueError:
            raise HTTPError(400, f"{name} must be an integer, not {value!r}") from None

    @staticmethod
    def _flag(request: Request, name: str) -> bool:
        return request.query_params.get(name, "").lower() in ("1", "true", "yes", "on")

    def _tasks(self) -> dict[str, dict[str, Any]]:
        self.history.refresh()
        return self.history.snapshot()

    # -- workers -------------------------------------------------------------------------------
    @endpoint
    def workers(self, request: Request, body: bytes) -> Any:
        """Each live worker's stats, queues, registered, scheduled, active, reserved and revoked
        tasks and configuration; `status=true`: only whether each is online; `workername=`: one."""
        live = self._live()
        if self._flag(request, "status"):
            return {name: True for name in sorted(live)}
        workername = request.query_params.get("workername")
        if workername is not None and workername not in live:
            raise HTTPError(404, f"Unknown worker '{workername}'")
        inspect = self.app.control.inspect(workername and [workername], timeout=self.inspect_timeout)
        workers: dict[str, dict[str, Any]] = {}
        for method in INSPECT_METHODS:
            for name, reply in (getattr(inspect, method)() or {}).items():
                workers.setdefault(name, {})[method] = reply
        now = time.time()
        for info in workers.values():
            info["timestamp"] = now
        return workers

    @endpoint
    def shutdown(self, request: Request, body: bytes) -> Any:
        name = self._known_worker(request.path_params["name"])
        self.app.control.broadcast("shutdown", destination=[name])
        return {"message": "Shutting down!"}

    @endpoint
    def pool_restart(self, request: Request, body: bytes) -> Any:
        name = self._known_worker(request.path_params["name"])
        raise HTTPError(403, f"Failed to restart the '{name}' pool: Pool restarts are not supported by Conveyor")

    @endpoint
    def pool_grow(self, request: Request, body: bytes) -> Any:
        return self._resize(request, "pool_grow", "grow", "Growing")

    @endpoint
    def pool_shrink(self, request: Request, body: bytes) -> Any:
        return self._resize(request, "pool_shrink", "shrink", "Shrinking")

    def _resize(self, request: Request, command: str, verb: str, doing: str) -> Any:
        name, n = self._known_worker(request.path_params["name"]), self._int(request, "n", 1)
        self._command(name, command, {"n": n}, f"Failed to {verb} '{name}' worker's pool")
        return {"message": f"{doing} '{name}' worker's pool by {n}"}

    @endpoint
    def autoscale(self, request: Request, body: bytes) -> Any:
        name = self._known_worker(request.path_params["name"])
        low, high = self._int(request, "min"), self._int(request, "max")
        self._command(name, "autoscale", {"min": low, "max": high}, f"Failed to autoscale '{name}' worker")
        return {"message": f"Autoscaling '{name}' worker (min={low}, max={high})"}

    @endpoint
    def add_consumer(self, request: Request, body: bytes) -> Any:
        return self._consumer(request, "add_consumer", "Failed to add '{q}' consumer to '{w}' worker")

    @endpoint
    def cancel_consumer(self, request: Request, body: bytes) -> Any:
        return self._consumer(request, "cancel_consumer", "Failed to cancel '{q}' consumer from '{w}' worker")

    def _consumer(self, request: Request, command: str, failed: str) -> Any:
        name = self._known_worker(request.path_params["name"])
        queue = request.query_params.get("queue")
        if not queue:
            raise HTTPError(400, "Missing argument queue")
        reply = self._command(name, command, {"queue": queue}, failed.format(q=queue, w=name))
        return {"message": reply["ok"]}

    # -- tasks ---------------------------------------------------------------------------------
    @endpoint
    def tasks(self, request: Request, body: bytes) -> Any:
        """Tasks by id, latest activity first, filtered and paged with Flower's parameters."""
        params = request.query_params

        def chosen(name: str) -> str | None:
            value = params.get(name)
            return None if value in (None, "", "All") else value

        offset, limit = max(0, self._int(request, "offset", 0)), params.get("limit")
        try:
            rows = select(
                self._tasks(), worker=chosen("workername"), name=chosen("taskname"), state=chosen("state"),
                received_start=chosen("received_start"), received_end=chosen("received_end"),
                search=chosen("search"), sort_by=chosen("sort_by"),
            )  # fmt: skip
            shown = rows[offset : offset + int(limit) if limit else None]
        except ValueError as exc:
            raise HTTPError(400, str(exc)) from None
        return {row["uuid"]: complete(row) for row in shown}

    @endpoint
    def task_types(self, request: Request, body: bytes) -> Any:
        return {"task-types": sorted({task["name"] for task in self._tasks().values() if task.get("name")})}

    @endpoint
    def queue_lengths(self, request: Request, body: bytes) -> Any:
        sizes = task_queues(self.app.broker.queue_sizes())
        for queue in self.app.default_queues():
            sizes.setdefault(queue, 0)
        return {"active_queues": [{"name": name, "messages": size} for name, size in sorted(sizes.items())]}

    @endpoint
    def task_info(self, request: Request, body: bytes) -> Any:
        task_id = request.path_params["task_id"]
        self.history.refresh()
        task = self.history.get(task_id)
        if task is None:
            raise HTTPError(404, f"Unknown task '{task_id}'")
        return {**{k: v for k, v in task.items() if k != "uuid"}, "task-id": task_id}

    @endpoint
    def task_result(self, request: Request, body: bytes) -> Any:
        task_id = request.path_params["task_id"]
        timeout = request.query_params.get("timeout")
        result = self.app.AsyncResult(task_id)
        if timeout:
            try:
                result.get(timeout=float(timeout), propagate=False)
            except ConveyorError:
                pass  # not ready in time: its state says so
            except ValueError:
                raise HTTPError(400, f"timeout must be a number, not {timeout!r}") from None
        response: dict[str, Any] = {"task-id": task_id, "state": result.state}
        if result.state in states.READY_STATES:
            self._add_result(response, result)
        return response

    @staticmethod
    def _add_result(response: dict[str, Any], result: Any) -> None:
        response["result"] = _safe(result.result)
        if result.state == states.FAILURE:
            response["traceback"] = result.traceback

    def _task(self, name: str) -> Any:
        try:
            return self.app.tasks[name]
        except (KeyError, NotRegistered):
            raise HTTPError(404, f"Unknown task '{name}'") from None

    @endpoint
    def apply(self, request: Request, body: bytes) -> Any:
        """Run a task by name and wait for its result."""
        task = self._task(request.path_params["name"])
        args, kwargs, options = _json_body(body)
        result = task.apply_async(args=args, kwargs=kwargs, **options)
        result.get(propagate=False)
        response = {"task-id": result.id, "state": result.state}
        self._add_result(response, result)
        return response

    @endpoint
    def async_apply(self, request: Request, body: bytes) -> Any:
        task = self._task(request.path_params["name"])
        args, kwargs, options = _json_body(body)
        result = task.apply_async(args=args, kwargs=kwargs, **options)
        return {"task-id": result.id, "state": result.state}

    @endpoint
    def send_task(self, request: Request, body: bytes) -> Any:
        """Send a task by name; the dashboard needs none of its code."""
        args, kwargs, options = _json_body(body)
        result = self.app.send_task(request.path_params["name"], args=args, kwargs=kwargs, **options)
        return {"task-id": result.id, "state": result.state}

    @endpoint
    def abort(self, request: Request, body: bytes) -> Any:
        """Flower's abort: the task is revoked (not run if it has not started)."""
        task_id = request.path_params["task_id"]
        self.app.control.revoke(task_id)
        return {"message": f"Aborted '{task_id}'"}

    @endpoint
    def revoke(self, request: Request, body: bytes) -> Any:
        task_id = request.path_params["task_id"]
        signal = request.query_params.get("signal") or "SIGTERM"
        try:
            self.app.control.revoke(task_id, terminate=self._flag(request, "terminate"), signal=signal)
        except ConveyorError as exc:
            raise HTTPError(400, str(exc)) from None
        return {"message": f"Revoked '{task_id}'"}

    @endpoint
    def timeout(self, request: Request, body: bytes) -> Any:
        """Set a task's soft and hard time limits on one worker (`workername`, `soft`, `hard`)."""
        name, given = request.path_params["name"], _arguments(request, body)
        self._task(name)
        worker = self._known_worker(given.get("workername", ""))
        try:
            limits = {k: float(given[k]) if given.get(k) else None for k in ("soft", "hard")}
        except ValueError:
            raise HTTPError(400, "soft and hard must be numbers of seconds") from None
        reply = self._command(worker, "time_limit", {"task_name": name, **limits}, "Failed to set timeouts")
        return {"message": reply["ok"]}

    @endpoint
    def rate_limit(self, request: Request, body: bytes) -> Any:
        """Set a task's rate limit on one worker (`workername`, `ratelimit`)."""
        name, given = request.path_params["name"], _arguments(request, body)
        self._task(name)
        worker = self._known_worker(given.get("workername", ""))
        arguments = {"task_name": name, "rate_limit": given.get("ratelimit", ""), "local": True}
        reply = self._command(worker, "rate_limit", arguments, "Failed to set rate limit")
        return {"message": reply["ok"]}

    async def healthcheck(self, request: Request) -> Response:
        return PlainTextResponse("OK")
