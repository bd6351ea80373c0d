"""The dashboard's pages at Flower's URLs, and what only they ask for.

| page | shows | reads |
|---|---|---|
| `/`, `/workers` | workers online, their pools and counts | `api/dashboard/workers` |
| `/worker/<name>` | pool, queues, held and registered tasks, settings; actions | Flower's `api/workers` |
| `/tasks` | every task known, sortable, filterable, searchable, a page at a time | `api/dashboard/tasks` |
| `/task/<id>` | arguments, result, timeline, relatives; revoke, retry | `api/task/info/<id>`, `api/tasks/<id>` |
| `/broker` | queues: depth, dead letters, age of the oldest message | `api/dashboard/broker` |
| `/overview` | throughput, rate limits, dead letters | `api/overview`, `api/rates` |

Pages are static HTML and one script (`static/`); they fetch JSON and reload it whenever
`api/stream` (server-sent events) says the dashboard took a new sample, so they update
live without reloading. Every path in them is relative to `<base href>`, which the server
sets to where the dashboard is mounted (`--url-prefix`).
"""

from __future__ import annotations

import ast
import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator
from importlib.resources import files
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from conveyor import states
from conveyor.control import task_queues
from conveyor.dashboard.history import complete, select
from conveyor.exceptions import ConveyorError
from conveyor.urls import redacted

if TYPE_CHECKING:
    from conveyor.dashboard.server import Dashboard

#: Rows of the task list per page, at most.
MAX_PAGE = 500
#: Seconds between comments on an idle event stream (proxies close silent connections).
STREAM_KEEPALIVE_SECONDS = 15.0
#: How often a stream looks whether the server is stopping.
STREAM_CHECK_SECONDS = 0.5
STATIC_TYPES = {".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml"}


class Pages:
    def __init__(self, dashboard: Dashboard) -> None:
        self.dashboard = dashboard
        self.app = dashboard.app
        self.history = dashboard.history

    def routes(self) -> list[Route]:
        return [
            Route("/", self.page("workers", "Workers")),
            Route("/workers", self.page("workers", "Workers")),
            Route("/worker/{name}", self.page("worker", "Worker")),
            Route("/tasks", self.page("tasks", "Tasks")),
            Route("/task/{task_id}", self.page("task", "Task")),
            Route("/broker", self.page("broker", "Broker")),
            Route("/overview", self.page("overview", "Overview")),
            Route("/static/{name}", self.static),
            Route("/api/stream", self.stream),
            Route("/api/dashboard/workers", self.workers),
            Route("/api/dashboard/tasks", self.tasks),
            Route("/api/dashboard/broker", self.broker),
            Route("/api/dashboard/retry/{task_id}", self.retry, methods=["POST"]),
        ]

    @staticmethod
    def page(name: str, title: str) -> Any:
        """A page: its body in the shared layout (`pages/layout.html`), or a whole document."""

        async def serve(request: Request) -> Response:
            pages = files("conveyor.dashboard").joinpath("pages")
            html = pages.joinpath(f"{name}.html").read_text()
            if not html.startswith("<!doctype"):
                layout = pages.joinpath("layout.html").read_text()
                html = layout.replace("{{title}}", title).replace("{{body}}", html)
            return HTMLResponse(html.replace("{{base}}", base_href(request)))

        return serve

    async def static(self, request: Request) -> Response:
        name = request.path_params["name"]
        kind = next((t for suffix, t in STATIC_TYPES.items() if name.endswith(suffix)), None)
        resource = files("conveyor.dashboard").joinpath("static", name)
        if kind is None or "/" in name or not resource.is_file():
            return Response("Not found", status_code=404)
        return Response(resource.read_bytes(), media_type=kind, headers={"Cache-Control": "no-cache"})

    async def stream(self, request: Request) -> Response:
        """Server-sent events: one `sample` each time the dashboard took a new sample."""

        async def events() -> AsyncIterator[str]:
            yield "retry: 3000\n\n"
            quiet_since = time.monotonic()
            while not self.dashboard.stopping:
                changed = self.dashboard.changed
                try:
                    await asyncio.wait_for(changed.wait(), STREAM_CHECK_SECONDS)
                except TimeoutError:
                    if time.monotonic() - quiet_since >= STREAM_KEEPALIVE_SECONDS:
                        quiet_since = time.monotonic()
                        yield ": keepalive\n\n"
                    continue
                quiet_since = time.monotonic()
                yield f"event: sample\ndata: {json.dumps({'generation': self.dashboard.generation})}\n\n"

        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)

    async def workers(self, request: Request) -> Response:
        """Each live worker's heartbeat, with its tasks counted by state from the task history."""
        try:
            overview = await run_in_threadpool(self.dashboard.overview_data)
            await run_in_threadpool(self.history.refresh)
        except ConveyorError as exc:
            return JSONResponse({"error": str(exc)}, status_code=503)
        counts: Counter[tuple[str, str]] = Counter()
        for task in self.history.snapshot().values():
            counts[(task.get("worker") or "", task.get("state") or "")] += 1
        workers = []
        for worker in overview["workers"]:
            name = worker["hostname"]
            workers.append({**{k: v for k, v in worker.items() if k not in ("tasks", "acked_running")},
                            "registered": len(worker.get("tasks") or ()),
                            **{state.lower(): counts[(name, state)] for state in
                               (states.SUCCESS, states.FAILURE, states.RETRY, states.REVOKED)}})  # fmt: skip
        waiting = sum(overview["queues"].values())
        return JSONResponse({"broker": overview["broker"], "workers": workers, "waiting": waiting,
                             "tasks_known": len(self.history)})  # fmt: skip

    async def tasks(self, request: Request) -> Response:
        """A page of the task list: `offset`, `limit`, `sort_by` (`-field`: descending), `state`,
        `taskname`, `workername`, `search`; with the total before and after filtering."""
        params = request.query_params

        def chosen(name: str) -> str | None:
            value = params.get(name)
            return None if value in (None, "", "All") else value

        try:
            offset = max(0, int(params.get("offset") or 0))
            limit = min(MAX_PAGE, max(1, int(params.get("limit") or 50)))
        except ValueError:
            return JSONResponse({"error": "offset and limit must be integers"}, status_code=400)
        try:
            await run_in_threadpool(self.history.refresh)
        except ConveyorError as exc:
            return JSONResponse({"error": str(exc)}, status_code=503)

        def page() -> dict[str, Any]:
            tasks = self.history.snapshot()
            matching = select(tasks, worker=chosen("workername"), name=chosen("taskname"), state=chosen("state"),
                              search=chosen("search"), sort_by=chosen("sort_by"))  # fmt: skip
            names = sorted({t["name"] for t in tasks.values() if t.get("name")})
            workers = sorted({t["worker"] for t in tasks.values() if t.get("worker")})
            shown = [complete(task) for task in matching[offset : offset + limit]]
            return {"total": len(tasks), "matching": len(matching), "offset": offset, "tasks": shown,
                    "names": names, "workers": workers}  # fmt: skip

        return JSONResponse(json.loads(json.dumps(await run_in_threadpool(page), default=repr)))

    async def broker(self, request: Request) -> Response:
        """Each queue: messages waiting, dead letters, and how long the oldest has waited where the
        broker can tell."""

        def read() -> dict[str, Any]:
            broker = self.app.broker
            sizes = task_queues(broker.queue_sizes())
            for queue in self.app.default_queues():
                sizes.setdefault(queue, 0)
            ages = broker.oldest_ages(list(sizes))
            dead = Counter(letter.queue for letter in broker.dead_letters(1000))
            queues = [{"name": q, "messages": n, "dead_letters": dead.get(q, 0), "oldest_age": ages.get(q)}
                      for q, n in sorted(sizes.items())]  # fmt: skip
            return {"broker": redacted(self.app.broker_url), "queues": queues}

        try:
            return JSONResponse(await run_in_threadpool(read))
        except ConveyorError as exc:
            return JSONResponse({"error": str(exc)}, status_code=503)

    async def retry(self, request: Request) -> Response:
        """Send a task again with the arguments it ran with, when those are known exactly: from the
        result backend (`result_extended`), or arguments the events show as plain literals."""
        task_id = request.path_params["task_id"]
        try:
            task = await run_in_threadpool(self.history.get, task_id)
            meta = await run_in_threadpool(self.app.backend.get_meta, task_id)
        except ConveyorError as exc:
            return JSONResponse({"error": str(exc)}, status_code=503)
        if task is None or not task.get("name"):
            return JSONResponse({"error": f"unknown task {task_id!r}"}, status_code=404)
        arguments = known_arguments(meta, task)
        if arguments is None:
            return JSONResponse(
                {"error": "its arguments are not known exactly (set result_extended to keep them)"}, status_code=409
            )
        args, kwargs = arguments
        try:
            result = await run_in_threadpool(
                lambda: self.app.send_task(task["name"], args=args, kwargs=kwargs, queue=task.get("routing_key"))
            )
        except ConveyorError as exc:
            return JSONResponse({"error": str(exc)}, status_code=503)
        return JSONResponse({"task-id": result.id, "retry-of": task_id})


def known_arguments(meta: dict[str, Any], task: dict[str, Any]) -> tuple[list[Any], dict[str, Any]] | None:
    """A task's exact arguments: stored with its result, or its events' repr when that is a literal."""
    if isinstance(meta.get("args"), list) and isinstance(meta.get("kwargs"), dict):
        return meta["args"], meta["kwargs"]
    try:
        args, kwargs = ast.literal_eval(task.get("args") or "()"), ast.literal_eval(task.get("kwargs") or "{}")
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None  # shortened ("..."), or objects that print as no literal
    if isinstance(args, (list, tuple)) and isinstance(kwargs, dict) and all(isinstance(k, str) for k in kwargs):
        return list(args), kwargs
    return None


def base_href(request: Request) -> str:
    """Where the dashboard is mounted, for the pages' relative links (`--url-prefix`)."""
    root = request.scope.get("root_path", "").rstrip("/")
    return json.dumps(f"{root}/")[1:-1].replace("<", "")
