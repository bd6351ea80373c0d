"""The `conveyor` command: worker, call, result, purge, status."""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import click

from conveyor import __version__, signals, states
from conveyor.app import Conveyor
from conveyor.config import POOL_NAMES
from conveyor.control import task_queues
from conveyor.exceptions import ConveyorError
from conveyor.extras import requires
from conveyor.urls import redacted
from conveyor.utils import log

STATE_COLOURS = {states.SUCCESS: "green", states.FAILURE: "red", states.REVOKED: "magenta", states.RETRY: "yellow"}


def find_app(spec: str) -> Conveyor:
    """`module`, `module:attribute` or `package.module.attribute` to the app inside."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module_name, _, attribute = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name.split(".")[0] or exc.name == module_name:
            raise click.UsageError(
                f"-A {spec}: no module named {exc.name!r} (run from the directory that holds it)"
            ) from None
        raise click.UsageError(f"-A {spec}: importing {module_name!r} failed: {exc}") from None
    except Exception as exc:
        raise click.UsageError(f"-A {spec}: importing {module_name!r} failed: {type(exc).__name__}: {exc}") from None
    if attribute:
        candidates = [getattr(module, attribute, None)]
    else:
        candidates = [getattr(module, "app", None), getattr(module, "celery", None)]
        candidates += [value for value in vars(module).values() if isinstance(value, Conveyor)]
    for candidate in candidates:
        if isinstance(candidate, Conveyor):
            return candidate
    what = f"attribute {attribute!r}" if attribute else "any Conveyor/Celery app"
    raise click.UsageError(f"-A {spec}: module {module_name!r} has no {what} (found {type(candidates[0]).__name__})")


class _Context:
    def __init__(self, app_spec: str | None, broker: str | None, backend: str | None) -> None:
        self.app_spec, self.broker, self.backend = app_spec, broker, backend
        self._app: Conveyor | None = None

    @property
    def app(self) -> Conveyor:
        if self._app is None:
            app = find_app(self.app_spec) if self.app_spec else Conveyor()
            try:
                if self.broker is not None:
                    app.conf.broker_url = self.broker
                if self.backend is not None:
                    app.conf.result_backend = self.backend
            except ConveyorError as exc:
                raise click.UsageError(str(exc)) from None
            self._app = app
        return self._app


pass_context = click.make_pass_decorator(_Context)
loglevel_option = click.option(
    "-l",
    "--loglevel",
    default="WARNING",
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], case_sensitive=False),
)
logfile_option = click.option("-f", "--logfile", help="Log to this file [default: stderr].")


def _plain(*values: object) -> list[Any]:
    """Table cells of text read from the broker: shown as they are, never read as rich markup."""
    from rich.text import Text

    return [Text(str(value)) for value in values]


def _check_port_free(address: str, port: int) -> None:
    """One clear error for a port in use, before the dashboard announces a URL it cannot serve."""
    import socket

    with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address, port))
        except OSError as exc:
            raise click.ClickException(f"cannot listen on {address}:{port}: {exc.strerror}") from None


class _Commands(click.Group):
    """Every command's Conveyor error (a broker that is down, a bad setting) is one `Error:` line."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConveyorError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-A", "--app", "app_spec", metavar="MODULE[:APP]", help="Module holding the app, e.g. -A task.")
@click.option("-b", "--broker", help="Broker URL (overrides broker_url).")
@click.option("--result-backend", help="Result backend URL (overrides result_backend).")
@click.version_option(__version__, prog_name="conveyor")
@click.pass_context
def main(ctx: click.Context, app_spec: str | None, broker: str | None, result_backend: str | None) -> None:
    """Conveyor: a distributed task queue with Celery's API."""
    ctx.obj = _Context(app_spec, broker, result_backend)


def _autoscale_option(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        parts = [int(part) for part in value.split(",")]
    except ValueError:
        raise click.BadParameter(f"expects MAX,MIN (e.g. 10,3), not {value!r}") from None
    maximum, minimum = (parts[0], parts[1]) if len(parts) == 2 else (parts[0], 0) if len(parts) == 1 else (0, 0)
    minimum = minimum or 1
    if len(parts) > 2 or not 0 < minimum <= maximum:
        raise click.BadParameter(f"expects MAX,MIN with 0 < MIN <= MAX, not {value!r}")
    return maximum, minimum


@main.command()
@loglevel_option
@logfile_option
@click.option(
    "-c", "--concurrency", type=click.IntRange(min=1), help="Pool size [default: CPU count; asyncio: 100 tasks]."
)
@click.option(
    "-P",
    "--pool",
    type=click.Choice(POOL_NAMES),
    help="Pool type [default: prefork]; asyncio interleaves async def tasks; gevent and eventlet run on threads.",
)
@click.option("-Q", "--queues", help="Comma-separated queues [default: every queue in task_queues].")
@click.option("-n", "--hostname", help="Worker name [default: conveyor@<host>].")
@click.option("--prefetch-multiplier", type=click.IntRange(min=0), help="Prefetch = concurrency x this (0: unlimited).")
@click.option(
    "--max-tasks-per-child", type=click.IntRange(min=1), help="Recycle a prefork child after this many tasks."
)
@click.option(
    "--max-memory-per-child", type=click.IntRange(min=1), help="Recycle a prefork child above this RSS in KiB."
)
@click.option("-B", "--beat", "embed_beat", is_flag=True, help="Also run beat (safe with several beats running).")
@click.option(
    "-E",
    "--task-events",
    is_flag=True,
    help="Record task events for the dashboard (on unless worker_send_task_events is False).",
)
@click.option(
    "-O",
    "optimization",
    type=click.Choice(["default", "fair"]),
    help="fair: a prefork child gets a job only when it has none (worker_prefork_ahead = False).",
)
@click.option(
    "--autoscale", metavar="MAX,MIN", callback=_autoscale_option,
    help="Grow the pool up to MAX under load, shrink it to MIN when idle (e.g. --autoscale=10,3).",
)  # fmt: skip
@pass_context
def worker(
    obj: _Context, loglevel: str, logfile: str | None, concurrency: int | None, pool: str | None, queues: str | None,
    hostname: str | None, prefetch_multiplier: int | None, max_tasks_per_child: int | None,
    max_memory_per_child: int | None, embed_beat: bool, task_events: bool, optimization: str | None,
    autoscale: tuple[int, int] | None,
) -> None:  # fmt: skip
    """Start a worker that runs tasks from the queues."""
    from conveyor.worker import Worker, collector

    app = obj.app  # first: the app's module may connect setup_logging receivers
    logging_taken_over = log.setup_logging(app.conf, loglevel, logfile)
    if max_tasks_per_child is not None:
        app.conf.worker_max_tasks_per_child = max_tasks_per_child
    if max_memory_per_child is not None:
        app.conf.worker_max_memory_per_child = max_memory_per_child
    if task_events:
        app.conf.worker_send_task_events = True
    if optimization is not None:
        app.conf.worker_prefork_ahead = optimization == "default"
    if pool in ("gevent", "eventlet"):
        logging.getLogger("conveyor.worker").warning(
            "-P %s runs on the threads pool: Conveyor does not monkey-patch the interpreter",
            pool,
        )
    chosen = [q.strip() for q in queues.split(",") if q.strip()] if queues else None
    instance = Worker(
        app, queues=chosen, concurrency=concurrency, pool=pool, hostname=hostname,
        prefetch_multiplier=prefetch_multiplier, beat=embed_beat, autoscale=autoscale,
    )  # fmt: skip
    signals.celeryd_after_setup.send(instance.hostname, instance=instance, conf=app.conf)
    _banner(instance)
    if not any(not name.startswith("conveyor.") for name in app.tasks):
        logging.getLogger("conveyor.worker").warning(
            "No task is registered: every task received will fail. Name the module that defines them "
            "with -A (e.g. conveyor -A proj worker), or list modules in imports/include."
        )
    if not logging_taken_over:
        log.redirect_stdouts(app.conf)
    collector.tune_for_worker()  # this process is the worker's alone
    instance.run()


@click.option("--port", type=click.IntRange(1, 65535), default=5555, show_default=True, help="Port to listen on.")
@click.option("--address", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--basic-auth", help="Require HTTP basic authentication: user:password.")
@click.option("--url-prefix", default="", help="Serve under this path (behind a proxy at /PREFIX/), as Flower's.")
@click.option(
    "--broker-api",
    help="RabbitMQ's management API, as Flower's (http://user:password@host:15672/api/): the broker page's "
    "age of each queue's oldest message. Default: the broker's host, port 15672, the broker's credentials.",
)
@click.option(
    "--unauthenticated-api",
    is_flag=True,
    help="Allow actions (revoke, rate limits) without authentication; without --basic-auth the dashboard is "
    "otherwise read-only.",
)
@loglevel_option
@pass_context
def flower(
    obj: _Context, port: int, address: str, basic_auth: str | None, url_prefix: str, broker_api: str | None,
    unauthenticated_api: bool, loglevel: str,
) -> None:  # fmt: skip
    """Serve the web dashboard: workers, queues, tasks, dead letters, actions; /metrics for Prometheus."""
    with requires("dashboard", "conveyor flower"):
        import uvicorn

        from conveyor.dashboard import create_app

    if basic_auth is not None and ":" not in basic_auth:
        raise click.BadParameter("must be user:password", param_hint="--basic-auth")
    prefix = url_prefix.strip("/")
    if broker_api:  # before the broker opens: create_app is its first use
        options = obj.app.conf.broker_transport_options
        obj.app.conf.broker_transport_options = {**options, "management_url": broker_api}
    dashboard = create_app(obj.app, basic_auth=basic_auth, unauthenticated_api=unauthenticated_api, url_prefix=prefix)
    _check_port_free(address, port)
    where = f"http://{address}:{port}/{prefix + '/' if prefix else ''}"
    click.echo(f"Conveyor dashboard on {where} (broker {obj.app.broker.display_url})", err=True)
    if basic_auth:
        access = "every route requires basic authentication"
    elif unauthenticated_api:
        access = "no authentication: anyone who reaches it may revoke tasks and set rate limits"
    else:
        access = "read-only (no --basic-auth): actions answer 403"
    click.echo(f"Access: {access}", err=True)
    config = uvicorn.Config(dashboard, host=address, port=port, log_level=loglevel.lower(), access_log=False)
    server = uvicorn.Server(config)
    exit_server = server.handle_exit

    def handle_exit(sig: int, frame: Any) -> None:
        dashboard.state.dashboard.stopping = True  # open pages' live streams end, and uvicorn with them
        exit_server(sig, frame)

    server.handle_exit = handle_exit  # type: ignore[method-assign]
    server.run()


main.add_command(main.command("flower")(flower))
main.add_command(main.commands["flower"], "dashboard")


@main.command()
@loglevel_option
@logfile_option
@click.option("--max-interval", type=float, help="Longest sleep between checks (beat_max_loop_interval).")
@click.option("-S", "--scheduler", help="A Celery-style Scheduler class to run, 'module:Class' (beat_scheduler).")
@click.option("-s", "--schedule", "schedule_filename", help="PersistentScheduler's file (beat_schedule_filename).")
@pass_context
def beat(
    obj: _Context, loglevel: str, logfile: str | None, max_interval: float | None, scheduler: str | None,
    schedule_filename: str | None,
) -> None:  # fmt: skip
    """Submit periodic tasks from beat_schedule; run as many as you like, each run is sent once.

    With a scheduler of your own (-S or beat_scheduler), run one beat: that scheduler keeps
    its own state, as in Celery."""
    import signal
    import threading

    from conveyor import schedulers
    from conveyor.beat import Beat

    app = obj.app  # first: the app's module may connect setup_logging receivers
    log.setup_logging(app.conf, loglevel, logfile)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        custom = schedulers.configured(app, max_interval, scheduler, schedule_filename)
    except (ImportError, AttributeError) as exc:
        raise click.UsageError(f"cannot load the scheduler {scheduler or app.conf.beat_scheduler!r}: {exc}") from exc
    if custom is not None:
        signals.beat_init.send(custom)
        schedulers.run(custom, stop)
        return
    beat = Beat(obj.app, max_interval)
    signals.beat_init.send(beat)
    beat.run(stop)


def _banner(worker: Any) -> None:
    app = worker.app
    tasks = sorted(name for name in app.tasks if not name.startswith("conveyor."))  # built-ins unlisted
    lines = [
        click.style(f" -------------- {worker.hostname} v{__version__}", bold=True),
        f"- ** app:         {app.main or '__main__'}",
        f"- ** transport:   {redacted(app.broker_url)}",
        f"- ** results:     {redacted(app.conf.result_backend or app.broker_url)}",
        *_state_line(app),
        f"- ** concurrency: {worker.concurrency} ({worker.pool_name})",
        f"- ** queues:      {', '.join(worker.queues)}",
        "",
        "[tasks]",
        *(f"  . {name}" for name in tasks),
        "",
    ]
    click.echo("\n".join(lines), err=True)


def _state_line(app: Any) -> list[str]:
    """Where a broker that keeps no state of its own (RabbitMQ) keeps revocations, rate limits,
    beat and the worker registry: they are shared only as far as that store is."""
    state_url = getattr(app.broker, "state_url", None)
    return [f"- ** state:       {redacted(state_url)}"] if state_url else []


def _json_option(value: str | None, what: str) -> Any:
    if value is None:
        return None
    try:
        return json.loads(value)
    except ValueError as exc:
        raise click.BadParameter(f"{what} must be JSON: {exc}") from None


@main.command()
@click.argument("name")
@click.option("-a", "--args", help='Positional arguments as a JSON list, e.g. "[1, 2]".')
@click.option("-k", "--kwargs", help="Keyword arguments as a JSON object, e.g. '{\"x\": 1}'.")
@click.option("--countdown", type=float, help="Run no sooner than this many seconds from now.")
@click.option("--eta", help="Run no sooner than this ISO-8601 time.")
@click.option("--expires", type=float, help="Seconds after which the task is not run.")
@click.option("--queue", help="Queue to send to.")
@click.option("--priority", type=click.IntRange(0, 255), help="0 (highest) to 255.")
@pass_context
def call(
    obj: _Context, name: str, args: str | None, kwargs: str | None, countdown: float | None,
    eta: str | None, expires: float | None, queue: str | None, priority: int | None,
) -> None:  # fmt: skip
    """Send task NAME; prints its id."""
    positional = _json_option(args, "--args") or []
    keywords = _json_option(kwargs, "--kwargs") or {}
    if not isinstance(positional, list) or not isinstance(keywords, dict):
        raise click.BadParameter("--args must be a JSON list and --kwargs a JSON object")
    options = {"countdown": countdown, "eta": eta, "expires": expires, "queue": queue, "priority": priority}
    app = obj.app
    clean: dict[str, Any] = {k: v for k, v in options.items() if v is not None}
    try:
        task = app.tasks.get(name)
        result = (
            task.apply_async(positional, keywords, **clean)
            if task
            else app.send_task(name, positional, keywords, **clean)
        )
    except (ConveyorError, TypeError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(result.id)


@main.command()
@click.argument("task_id")
@click.option("--wait", is_flag=True, help="Wait until the task is ready.")
@click.option("--timeout", type=float, help="With --wait: give up after this many seconds.")
@click.option("--traceback", "show_traceback", is_flag=True, help="Print the traceback of a failed task.")
@pass_context
def result(obj: _Context, task_id: str, wait: bool, timeout: float | None, show_traceback: bool) -> None:
    """Show the state and result of task TASK_ID."""
    handle = obj.app.AsyncResult(task_id)
    if wait:
        handle.get(timeout=timeout, propagate=False)
    state = handle.state
    value = handle.traceback if show_traceback else handle.result
    click.echo(
        f"{click.style(state, fg=STATE_COLOURS.get(state), bold=True)}: {value!r}"
        if not show_traceback
        else value or ""
    )


@main.command()
@click.argument("task_ids", nargs=-1, required=True)
@click.option("--terminate", is_flag=True, help="Also stop the task if it is running.")
@click.option("--signal", "signal_name", default="SIGTERM", show_default=True, help="Signal for --terminate (prefork).")
@pass_context
def revoke(obj: _Context, task_ids: tuple[str, ...], terminate: bool, signal_name: str) -> None:
    """Revoke tasks: they will not run (kept by the broker, so later workers honour it too)."""
    obj.app.control.revoke(list(task_ids), terminate=terminate, signal=signal_name)
    click.echo(f"Revoked {len(task_ids)} task(s){' (terminating if running)' if terminate else ''}.")


@main.command("rate-limit")
@click.argument("task_name", required=False)
@click.argument("rate", required=False)
@click.option("--clear", is_flag=True, help="Remove the run-time limit: the task's configured rate_limit applies.")
@pass_context
def rate_limit(obj: _Context, task_name: str | None, rate: str | None, clear: bool) -> None:
    """Set a task's rate limit on every worker (e.g. `rate-limit task.add 10/m`, 0 for none);
    with no arguments, list the limits set so far."""
    control = obj.app.control
    if task_name is None:
        for name, value in sorted(control.rate_limits().items()):
            click.echo(f"{name}: {value}")
        return
    if rate is None and not clear:
        raise click.UsageError("give a RATE such as 10/s, 100/m, 5/h (0: no limit), or --clear")
    control.rate_limit(task_name, None if clear else rate)
    click.echo(f"Rate limit of {task_name}: {'as configured' if clear else rate} (workers apply it within a second).")


@main.command()
@click.option("-Q", "--queues", help="Comma-separated queues [default: the app's queues].")
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")
@pass_context
def purge(obj: _Context, queues: str | None, force: bool) -> None:
    """Delete every message waiting in the queues."""
    app = obj.app
    names = [q.strip() for q in queues.split(",") if q.strip()] if queues else app.default_queues()
    sizes = app.broker.queue_sizes(names)
    total = sum(sizes.values())
    if not force:
        click.confirm(f"Delete {total} waiting message(s) from {', '.join(names)}? This cannot be undone", abort=True)
    removed = app.broker.purge(names)
    click.echo(f"Purged {removed} message(s) from {len(names)} queue(s).")


@main.command("dead-letters")
@click.option("-n", "--limit", type=click.IntRange(min=1), default=20, show_default=True, help="How many.")
@click.option("--requeue", is_flag=True, help="Send them back to their queues (oldest first) instead of listing.")
@pass_context
def dead_letters(obj: _Context, limit: int, requeue: bool) -> None:
    """Show messages moved to the dead-letter store (newest first), and why; or requeue them."""
    from datetime import datetime

    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from conveyor.messages import Envelope
    from conveyor.signing import unsealed

    if requeue:
        moved = obj.app.broker.requeue_dead_letters(limit)
        click.echo(f"Requeued {moved} dead letter(s).")
        return
    letters = obj.app.broker.dead_letters(limit)
    table = Table(title=Text(f"Dead letters on {obj.app.broker.display_url} (newest first)"))
    for column in ("when", "queue", "task", "reason"):
        table.add_column(column, overflow="fold")
    for letter in letters:
        try:
            envelope = Envelope.parse(unsealed(letter.body))
            task = f"{envelope.task_name}[{envelope.task_id}]"
        except ConveyorError:
            task = f"(undecodable, {len(letter.body)} bytes)"
        when = datetime.fromtimestamp(letter.failed_at).strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(*_plain(when, letter.queue, task, letter.reason))
    Console().print(table)
    click.echo(f"{len(letters)} dead letter(s) shown." if letters else "No dead letters.")


def _remote_command(kind: str) -> click.Command:
    """`conveyor inspect` and `conveyor control`: one command each, any registered command name."""

    @click.argument("command")
    @click.argument("arguments", nargs=-1)
    @click.option("-d", "--destination", help="Comma-separated worker names [default: every live worker].")
    @click.option("-t", "--timeout", type=float, default=1.0, show_default=True, help="Seconds to wait for replies.")
    @click.option("-j", "--json", "as_json", is_flag=True, help="Print the replies as one JSON object.")
    @pass_context
    def remote(
        obj: _Context, command: str, arguments: tuple[str, ...], destination: str | None, timeout: float,
        as_json: bool,
    ) -> None:  # fmt: skip
        from conveyor.worker.control import COMMANDS

        app = obj.app  # its modules may register commands of their own
        names = sorted(name for name, entry in COMMANDS.items() if entry.kind == kind)
        entry = COMMANDS.get(command)
        if entry is None or entry.kind != kind:
            raise click.UsageError(f"unknown {kind} command {command!r} (known: {', '.join(names)})")
        keywords = _command_arguments(command, entry.args, arguments)
        targets = [d.strip() for d in destination.split(",") if d.strip()] if destination else None
        replies = app.control.broadcast(command, keywords, targets, reply=True, timeout=timeout) or []
        by_node = {hostname: reply for each in replies for hostname, reply in each.items()}
        if as_json:
            click.echo(json.dumps(by_node, indent=2, default=repr))
        else:
            for hostname, reply in sorted(by_node.items()):
                _echo_reply(hostname, reply)
        if not by_node:
            raise click.ClickException("No nodes replied within time constraint.")
        if not as_json:
            click.echo(f"\n{len(by_node)} node{'s' if len(by_node) != 1 else ''} online.")

    remote.__doc__ = (
        "Ask the live workers what they are doing: COMMAND is ping, active, reserved, scheduled, registered,\n"
        "stats, revoked, active_queues, query_task ID..., conf, report or clock (or one your app registers)."
        if kind == "inspect"
        else "Change the live workers: COMMAND is shutdown, pool_grow [N], pool_shrink [N], autoscale MAX MIN,\n"
        "add_consumer QUEUE, cancel_consumer QUEUE, rate_limit TASK RATE, time_limit TASK SOFT [HARD],\n"
        "revoke ID... or terminate SIGNAL ID... (or one your app registers)."
    )
    remote.__doc__ += " Exits non-zero when no worker replied (a liveness probe: inspect ping -d worker@$HOSTNAME)."
    return click.command(kind)(remote)


def _echo_reply(hostname: str, reply: Any) -> None:
    """Celery's layout: `-> worker@host: OK`, then the reply indented."""
    failed = isinstance(reply, dict) and "error" in reply
    click.echo(f"-> {hostname}: " + click.style("ERROR" if failed else "OK", fg="red" if failed else "green"))
    if isinstance(reply, dict) and len(reply) == 1 and ("ok" in reply or "error" in reply):
        reply = next(iter(reply.values()))  # the message itself
    text = reply if isinstance(reply, str) else json.dumps(reply, indent=2, default=repr)
    click.echo("\n".join(f"    {line}" for line in text.splitlines() or ["(empty)"]))


def _command_arguments(command: str, spec: Sequence[tuple[str, Any]], arguments: Sequence[str]) -> dict[str, Any]:
    """The command line's positional arguments as the command's keyword arguments."""
    if not spec:
        if arguments:
            raise click.UsageError(f"{command} takes no arguments")
        return {}
    if command == "terminate":  # Celery's order: the signal, then the ids
        if len(arguments) < 2:
            raise click.UsageError("terminate SIGNAL ID...")
        return {"signal": arguments[0], "task_id": list(arguments[1:])}
    (last, _), variadic = spec[-1], command in ("query_task", "revoke")
    if variadic:
        return {last: list(arguments)}
    if len(arguments) > len(spec):
        raise click.UsageError(f"{command} takes at most {len(spec)} arguments ({', '.join(n for n, _ in spec)})")
    keywords = {}
    for (name, kind), value in zip(spec, arguments, strict=False):
        try:
            keywords[name] = kind(value)
        except ValueError:
            raise click.UsageError(f"{command}: {name} must be {kind.__name__}, not {value!r}") from None
    return keywords


main.add_command(_remote_command("inspect"))
main.add_command(_remote_command("control"))


@main.command()
@pass_context
def status(obj: _Context) -> None:
    """Show live workers and queue depths."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    app = obj.app
    console = Console()
    workers = app.state.workers()
    table = Table(title=Text(f"Workers on {app.broker.display_url}"))
    for column in ("worker", "pool", "concurrency", "active", "processed", "queues"):
        table.add_column(column)
    for hostname, raw in sorted(workers.items()):
        info = json.loads(raw)
        table.add_row(*_plain(hostname, info.get("pool"), info.get("concurrency"), info.get("active"),
                              info.get("processed"), ", ".join(info.get("queues", []))))  # fmt: skip
    console.print(table)
    queues = Table(title="Queues")
    queues.add_column("queue")
    queues.add_column("messages", justify="right")
    sizes = task_queues(app.broker.queue_sizes())
    for name in sorted(set(sizes) | set(app.default_queues())):
        queues.add_row(*_plain(name, sizes.get(name, 0)))
    console.print(queues)
    console.print(f"{len(workers)} node(s) online." if workers else "[red]No workers online.[/red]")
    if not workers:
        sys.exit(1)


if __name__ == "__main__":
    main()
