"""The dashboard's routes: what a page, a script or Prometheus asks of a Conveyor deployment.

Everything is read live from the broker and the result backend (workers from
their heartbeats, queue depths, dead letters, a task's state and history), so
any number of dashboards can run beside any number of workers.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from importlib.resources import files
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from conveyor.exceptions import ConveyorError

if TYPE_CHECKING:
    from conveyor.app import Conveyor


def create_app(app: Conveyor, *, basic_auth: str | None = None) -> Starlette:
    """The dashboard for `app`; `basic_auth="user:password"` requires those credentials."""
    routes = Dashboard(app).routes()
    middleware = [Middleware(BasicAuth, credentials=basic_auth)] if basic_auth else []
    return Starlette(routes=routes, middleware=middleware)


class Dashboard:
    def __init__(self, app: Conveyor) -> None:
        self.app = app

    def routes(self) -> list[Route]:
        return [
            Route("/", self.page),
            Route("/api/overview", self.overview),
            Route("/api/tasks", self.tasks),
            Route("/api/tasks/{task_id}", self.task),
            Route("/api/tasks/{task_id}/revoke", self.revoke, methods=["POST"]),
            Route("/metrics", self.metrics),
        ]

    async def page(self, request: Request) -> Response:
        return HTMLResponse(files("conveyor.dashboard").joinpath("index.html").read_text())

    def _overview(self) -> dict[str, Any]:
        broker = self.app.broker
        workers = [{"hostname": name, **json.loads(raw)} for name, raw in sorted(broker.workers().items())]
        sizes = broker.queue_sizes()
        for queue in self.app.default_queues():
            sizes.setdefault(queue, 0)
        letters = broker.dead_letters(100)
        return {
            "broker": self.app.broker_url,
            "workers": workers,
            "queues": dict(sorted(sizes.items())),
            "dead_letters": [
                {"queue": letter.queue, "reason": letter.reason, "failed_at": letter.failed_at} for letter in letters
            ],
        }

    async def overview(self, request: Request) -> Response:
        try:
            return JSONResponse(self._overview())
        except ConveyorError as exc:
            return JSONResponse({"error": str(exc)}, status_code=503)

    async def tasks(self, request: Request) -> Response:
        """Recent tasks, newest first, from the workers' events (workers started with -E)."""
        limit = min(int(request.query_params.get("limit") or 100), 1000)
        try:
            events = self.app.broker.recent_events(EVENTS_READ)
        except ConveyorError as exc:
            return JSONResponse({"error": str(exc)}, status_code=503)
        return JSONResponse(recent_tasks(events, limit))

    async def task(self, request: Request) -> Response:
        task_id = request.path_params["task_id"]
        try:
            board = self.app.AsyncResult(task_id).scoreboard
        except ConveyorError as exc:
            return JSONResponse({"error": str(exc)}, status_code=503)
        return JSONResponse(json.loads(json.dumps(board, default=repr)))

    async def revoke(self, request: Request) -> Response:
        task_id = request.path_params["task_id"]
        terminate = request.query_params.get("terminate") in ("1", "true", "yes")
        signal = request.query_params.get("signal") or "SIGTERM"
        try:
            self.app.control.revoke(task_id, terminate=terminate, signal=signal)
        except (ConveyorError, ValueError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"revoked": task_id, "terminate": terminate})

    async def metrics(self, request: Request) -> Response:
        from prometheus_client import CollectorRegistry, Gauge, generate_latest

        try:
            overview = self._overview()
        except ConveyorError as exc:
            return PlainTextResponse(f"# broker unreachable: {exc}\n", status_code=503)
        registry = CollectorRegistry()
        depth = Gauge("conveyor_queue_messages", "Messages waiting in a queue", ["queue"], registry=registry)
        for queue, size in overview["queues"].items():
            depth.labels(queue).set(size)
        Gauge("conveyor_workers", "Workers online", registry=registry).set(len(overview["workers"]))
        active = Gauge("conveyor_worker_active_tasks", "Tasks a worker holds", ["worker"], registry=registry)
        processed = Gauge("conveyor_worker_processed_tasks", "Tasks a worker finished", ["worker"], registry=registry)
        for worker in overview["workers"]:
            active.labels(worker["hostname"]).set(worker.get("active") or 0)
            processed.labels(worker["hostname"]).set(worker.get("processed") or 0)
        Gauge("conveyor_dead_letters", "Dead letters (up to 100 counted)", registry=registry).set(
            len(overview["dead_letters"])
        )
        return Response(generate_latest(registry), media_type="text/plain; version=0.0.4")


#: Events read for the task list: enough for the last few hundred tasks' whole lives.
EVENTS_READ = 5000
_STATE_OF_EVENT = {
    "task-received": "RECEIVED", "task-started": "STARTED", "task-succeeded": "SUCCESS",
    "task-failed": "FAILURE", "task-retried": "RETRY", "task-revoked": "REVOKED",
}  # fmt: skip


def recent_tasks(events: list[bytes], limit: int) -> list[dict[str, Any]]:
    """Fold events (oldest first) into one row per task: its latest state and what is known of it."""
    tasks: dict[str, dict[str, Any]] = {}
    for raw in events:
        try:
            event = json.loads(raw)
            task_id, kind = event["uuid"], event["type"]
        except (ValueError, KeyError, TypeError):
            continue  # not an event of ours: skip it, do not fail the page
        row = tasks.pop(task_id, None) or {"id": task_id}
        tasks[task_id] = row  # re-inserted: the dict stays ordered by latest activity
        row.update({k: v for k, v in event.items() if k not in ("type", "uuid", "timestamp")})
        row["state"] = _STATE_OF_EVENT.get(kind, kind)
        row["updated"] = event.get("timestamp")
        if kind == "task-received":
            row["received"] = event.get("timestamp")
    return list(reversed(list(tasks.values())))[:limit]


class BasicAuth:
    """HTTP basic authentication for every route (constant-time comparison)."""

    def __init__(self, app: ASGIApp, credentials: str) -> None:
        if ":" not in credentials:
            raise ValueError("basic auth credentials must be 'user:password'")
        self.app = app
        self.expected = credentials.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self._allowed(HTTPConnection(scope)):
            response = PlainTextResponse(
                "Authentication required", status_code=401, headers={"WWW-Authenticate": 'Basic realm="conveyor"'}
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _allowed(self, connection: HTTPConnection) -> bool:
        kind, _, token = connection.headers.get("authorization", "").partition(" ")
        if kind.lower() != "basic":
            return False
        try:
            given = base64.b64decode(token, validate=True)
        except (binascii.Error, ValueError):
            return False
        return secrets.compare_digest(given, self.expected)


__all__ = ["BasicAuth", "create_app"]
