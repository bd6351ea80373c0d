"""The dashboard's routes: what a page, a script or Prometheus asks of a Conveyor deployment.

Everything is read live from the broker and the result backend (workers from
their heartbeats, queue depths, dead letters, a task's state and history), so
any number of dashboards can run beside any number of workers. Rates over
time are sampled by the dashboard itself while it runs (`Rates`): the
workers' processed counts and the queue depths every few seconds, the last
ten minutes kept.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import itertools
import json
import logging
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from conveyor.control import task_queues
from conveyor.dashboard.flower import FlowerAPI, FlowerMetrics
from conveyor.dashboard.history import TaskHistory, complete
from conveyor.dashboard.pages import Pages
from conveyor.exceptions import ConveyorError
from conveyor.urls import redacted

if TYPE_CHECKING:
    from conveyor.app import Conveyor


logger = logging.getLogger("conveyor.dashboard")

#: How often the dashboard samples rates, and how many samples it keeps (ten minutes).
SAMPLE_SECONDS = 2.0
SAMPLES_KEPT = 300
#: How often the task list takes in what the result backend holds (tasks without events): every
#: minute while that finds tasks, every ten once events tell of everything (a read walks every
#: result on Redis).
BACKEND_SECONDS = 60.0
BACKEND_QUIET_SECONDS = 600.0


def create_app(
    app: Conveyor,
    *,
    basic_auth: str | None = None,
    unauthenticated_api: bool = False,
    sample_seconds: float = SAMPLE_SECONDS,
    url_prefix: str = "",
) -> Starlette:
    """The dashboard for `app`.

    `basic_auth="user:password"` puts every route behind those credentials. Without them the
    dashboard is read-only (actions answer 403) unless `unauthenticated_api`. `url_prefix`
    serves it under `/<prefix>/`.
    """
    dashboard = Dashboard(app, sample_seconds)
    middleware = [Middleware(Guard, credentials=basic_auth, unauthenticated_api=unauthenticated_api)]
    routes: list[BaseRoute] = [*Pages(dashboard).routes(), *dashboard.routes(),
                               *FlowerAPI(app, dashboard.history).routes()]  # fmt: skip
    if url_prefix.strip("/"):
        routes = [Mount(f"/{url_prefix.strip('/')}", routes=routes)]
    server = Starlette(routes=routes, middleware=middleware, lifespan=dashboard.lifespan)
    server.state.dashboard = dashboard
    return server


class Rates:
    """Tasks finished per second and tasks waiting, sampled over time.

    A rate is the growth of the workers' processed counts since the previous
    sample, over the time between them. Each worker's last count is kept, so a
    heartbeat missed in one sample is counted in the next; a count that went
    down is a restarted worker, counted from zero.
    """

    def __init__(self, kept: int = SAMPLES_KEPT) -> None:
        self.samples: deque[dict[str, Any]] = deque(maxlen=kept)
        self._counts: dict[str, int] = {}
        self._last_at: float | None = None

    def add(self, at: float, overview: dict[str, Any]) -> None:
        done = 0
        for worker in overview["workers"]:
            name, count = worker["hostname"], int(worker.get("processed") or 0)
            before = self._counts.get(name)
            if before is not None:  # a worker's first sample is its baseline
                done += count - before if count >= before else count
            self._counts[name] = count
        if self._last_at is not None and at > self._last_at:
            self.samples.append({"at": at, "rate": done / (at - self._last_at),
                                 "waiting": sum(overview["queues"].values()),
                                 "workers": len(overview["workers"])})  # fmt: skip
        self._last_at = at


class Dashboard:
    def __init__(self, app: Conveyor, sample_seconds: float = SAMPLE_SECONDS) -> None:
        self.app = app
        self.sample_seconds = sample_seconds
        self.rates = Rates()
        self.flower = FlowerMetrics()
        self.history = TaskHistory(app.state, app.backend)
        #: Bumped at each sample: pages listening to /api/stream reload what they show.
        self.generation = 0
        self.changed = asyncio.Event()
        #: Set when the server stops: the pages' streams end, so it need not wait for them.
        self.stopping = False

    @contextlib.asynccontextmanager
    async def lifespan(self, _: Starlette) -> AsyncIterator[None]:
        sampler = asyncio.create_task(self._sample())
        try:
            yield
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler

    async def _sample(self) -> None:
        next_read = 0.0
        while True:
            try:
                if time.monotonic() >= next_read:
                    added = await asyncio.to_thread(self.history.load_stored)
                    next_read = time.monotonic() + (BACKEND_SECONDS if added else BACKEND_QUIET_SECONDS)
                overview = await asyncio.to_thread(self.overview_data)
                await asyncio.to_thread(self._count_events, overview)
                # Keeps the clock by which Redis dates the oldest message (the broker page).
                await asyncio.to_thread(self.app.broker.oldest_ages, list(overview["queues"]))
            except ConveyorError:
                pass  # the broker is away: a gap in the chart, and the page says why
            except Exception:  # a bug of ours: the pages keep their live updates meanwhile
                logger.exception("The dashboard's sample failed")
            else:
                self.rates.add(time.time(), overview)
            self.generation += 1
            self.changed.set()
            self.changed = asyncio.Event()
            await asyncio.sleep(self.sample_seconds)

    def _count_events(self, overview: dict[str, Any]) -> None:
        self.flower.count(self.history.refresh())
        self.flower.update_workers(overview["workers"], self.history.snapshot())

    def routes(self) -> list[Route]:
        return [
            Route("/api/overview", self.overview),
            Route("/api/recent-tasks", self.tasks),
            Route("/api/tasks/{task_id}", self.task),
            Route("/api/tasks/{task_id}/revoke", self.revoke, methods=["POST"]),
            Route("/api/rates", self.rates_over_time),
            Route("/api/rate-limits", self.rate_limits),
            Route("/api/rate-limits/{task_name}", self.set_rate_limit, methods=["POST", "DELETE"]),
            Route("/metrics", self.metrics),
        ]

    def overview_data(self) -> dict[str, Any]:
        broker = self.app.broker
        workers = [{"hostname": name, **json.loads(raw)} for name, raw in sorted(self.app.state.workers().items())]
        sizes = task_queues(broker.queue_sizes())
        for queue in self.app.default_queues():
            sizes.setdefault(queue, 0)
        letters = broker.dead_letters(100)
        return {
            "broker": redacted(self.app.broker_url),
            "workers": workers,
            "tasks": sorted({name for worker in workers for name in worker.get("tasks") or ()}),
            "rate_limits": self.app.control.rate_limits(),
            "queues": dict(sorted(sizes.items())),
            "dead_letters": [
                {"queue": letter.queue, "reason": letter.reason, "failed_at": letter.failed_at} for letter in letters
            ],
        }

    async def overview(self, request: Request) -> Response:
        try:
            return JSONResponse(self.overview_data())
        except ConveyorError as exc:
            return JSONResponse({"error": str(exc)}, status_code=503)

    async def tasks(self, request: Request) -> Response:
        """Recent tasks, newest first, from the workers' events and the result backend."""
        limit = min(int(request.query_params.get("limit") or 100), 1000)
        try:
            await asyncio.to_thread(self.history.refresh)
        except ConveyorError as exc:
            return JSONResponse({"error": str(exc)}, status_code=503)
        return JSONResponse(recent_tasks(self.history.snapshot(), limit))

    async def task(self, request: Request) -> Response:
        task_id = request.path_params["task_id"]
        try:
            board = self.app.AsyncResult(task_id).scoreboard
            meta = self.app.backend.get_meta(task_id)
        except ConveyorError as exc:
            return JSONResponse({"error": str(exc)}, status_code=503)
        # Celery's layout of the tasks a run sent: [[[id, parent], None], ...]
        board["children"] = [c[0][0] for c in meta.get("children") or () if isinstance(c, list) and c and c[0]]
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

    async def rates_over_time(self, request: Request) -> Response:
        """Tasks finished per second and tasks waiting, oldest first, over the last ten minutes."""
        return JSONResponse(list(self.rates.samples))

    async def rate_limits(self, request: Request) -> Response:
        try:
            return JSONResponse(self.app.control.rate_limits())
        except ConveyorError as exc:
            return JSONResponse({"error": str(exc)}, status_code=503)

    async def set_rate_limit(self, request: Request) -> Response:
        """POST ?rate=10/m sets a task's rate limit on every worker (0: none); DELETE clears it."""
        name = request.path_params["task_name"]
        rate = None if request.method == "DELETE" else request.query_params.get("rate")
        if request.method == "POST" and not rate:
            return JSONResponse({"error": "give ?rate= such as 10/s, 100/m, 5/h (0: no limit)"}, status_code=400)
        try:
            self.app.control.rate_limit(name, rate)
        except (ConveyorError, ValueError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"task": name, "rate_limit": rate})

    async def metrics(self, request: Request) -> Response:
        from prometheus_client import CollectorRegistry, Gauge, generate_latest

        try:
            overview = self.overview_data()
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
        flower = generate_latest(self.flower.registry)  # Flower's names, for dashboards made for Flower
        return Response(generate_latest(registry) + flower, media_type="text/plain; version=0.0.4")


def recent_tasks(tasks: dict[str, dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """One row per task, newest first: its latest state and what is known of it."""
    rows = []
    for task in itertools.islice(reversed(tasks.values()), limit):
        rows.append({**{k: v for k, v in task.items() if v is not None}, "id": task["uuid"],
                     "hostname": complete(task)["worker"], "updated": task["timestamp"]})  # fmt: skip
    return rows


#: Methods that change nothing.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: Failed logins: each doubles the wait before a client's next attempt is answered, up to this.
MAX_LOGIN_DELAY_SECONDS = 5.0
FIRST_LOGIN_DELAY_SECONDS = 0.1


class Guard:
    """Who may do what: every route behind basic authentication when credentials are set; without
    them, read-only unless mutations were explicitly allowed; a mutation coming from a page of
    another origin is refused even with credentials (the browser would send them cached)."""

    def __init__(self, app: ASGIApp, credentials: str | None, unauthenticated_api: bool = False) -> None:
        if credentials is not None and ":" not in credentials:
            raise ValueError("basic auth credentials must be 'user:password'")
        self.app = app
        self.expected = credentials.encode() if credentials is not None else None
        self.unauthenticated_api = unauthenticated_api
        self._failures: dict[str, int] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        connection = HTTPConnection(scope)
        refusal = await self._refusal(connection, scope["method"])
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _refusal(self, connection: HTTPConnection, method: str) -> Response | None:
        if self.expected is not None and not await self._authenticated(connection):
            return PlainTextResponse(
                "Authentication required", status_code=401, headers={"WWW-Authenticate": 'Basic realm="conveyor"'}
            )
        if method in SAFE_METHODS:
            return None
        if self.expected is None and not self.unauthenticated_api:
            return JSONResponse(
                {"error": "the dashboard is read-only: start it with --basic-auth user:password "
                 "(or --unauthenticated-api) to allow actions"},
                status_code=403,
            )  # fmt: skip
        if not same_origin(connection):
            return JSONResponse({"error": "cross-origin request refused"}, status_code=403)
        return None

    async def _authenticated(self, connection: HTTPConnection) -> bool:
        client = connection.client.host if connection.client else "?"
        failures = self._failures.get(client, 0)
        if failures:
            await asyncio.sleep(min(MAX_LOGIN_DELAY_SECONDS, FIRST_LOGIN_DELAY_SECONDS * 2 ** (failures - 1)))
        if self._credentials_match(connection):
            self._failures.pop(client, None)
            return True
        if connection.headers.get("authorization"):  # a browser's first, credential-less request is no failure
            if len(self._failures) > 10_000:
                self._failures.clear()  # bounded memory under a flood of clients
            self._failures[client] = failures + 1
        return False

    def _credentials_match(self, connection: HTTPConnection) -> bool:
        kind, _, token = connection.headers.get("authorization", "").partition(" ")
        if kind.lower() != "basic" or self.expected is None:
            return False
        try:
            given = base64.b64decode(token, validate=True)
        except (binascii.Error, ValueError):
            return False
        return secrets.compare_digest(given, self.expected)


def same_origin(connection: HTTPConnection) -> bool:
    """Whether a request's Origin (or else Referer) names the host it was sent to. A request
    with neither comes from a script or a command-line client, not from a foreign page."""
    source = connection.headers.get("origin") or connection.headers.get("referer")
    if not source:
        return True
    return urlsplit(source).netloc == connection.headers.get("host", "")


__all__ = ["Guard", "create_app"]
