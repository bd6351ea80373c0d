"""Conveyor's benchmark: one command, one table.

    ./scripts/bench                     # SQLite (the embedded default)
    ./scripts/bench --tasks 20000

Measures, on one machine, with one worker process started through the CLI:
single-call enqueue rate (`delay` in a loop), batch publish rate (one broker
call for many messages, and `group()`, which also builds them), drain rate of one worker with results stored and
with results ignored, round-trip latency of `delay().get()` on an idle
worker (p50/p99), and the worker's resident memory.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from benchmarks import report

ROOT = Path(__file__).resolve().parents[1]
PREFIX = f"bench{os.getpid()}:"
REDIS_URL = os.environ.get("CONVEYOR_REDIS_URL", "redis://127.0.0.1:6379/14")
AMQP_URL = os.environ.get("CONVEYOR_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@contextmanager
def worker(
    env: dict[str, str], pool: str, concurrency: int, prefetch: int, *extra: str
) -> Iterator[subprocess.Popen[bytes]]:
    command = [sys.executable, "-m", "conveyor.cli", "-A", "benchmarks.bench_app", "worker", "-l", "warning",
               "-P", pool, "-c", str(concurrency), "--prefetch-multiplier", str(prefetch), *extra]  # fmt: skip
    process = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True, stderr=subprocess.DEVNULL)
    time.sleep(1.5)
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def control_ping(app, times: int = 50) -> float:  # type: ignore[no-untyped-def]
    """Median milliseconds of `app.control.ping()` answered by the benchmark's one worker."""
    seconds = []
    for _ in range(times):
        sent = time.perf_counter()
        replies = app.control.ping(timeout=2)
        seconds.append(time.perf_counter() - sent)
        assert len(replies) == 1, replies
    return statistics.median(seconds) * 1000


def signing_costs(body: bytes, times: int = 2000) -> list[tuple[str, str]]:
    """Microseconds to seal and open one task message, with a shared secret and with a certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from conveyor.signing import Certificates, SharedSecret, Signing

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        key_path, cert_path = Path(directory, "bench.key"), Path(directory, "bench.pem")
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))  # fmt: skip
        cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        kinds = [("shared secret, HMAC-SHA256", SharedSecret(["bench"])),
                 ("X.509, ECDSA P-256", Certificates(str(key_path), str(cert_path), str(cert_path)))]  # fmt: skip
        for label, keys in kinds:
            signing = Signing(keys)
            started = time.perf_counter()
            for _ in range(times):
                signing.open(signing.seal(body))
            rows.append(
                (f"sign + verify one message, {label}", f"{(time.perf_counter() - started) / times * 1e6:.1f} µs")
            )
    return rows


def dashboard_task_list(tasks: int = 100_000) -> list[tuple[str, str]]:
    """Milliseconds the dashboard takes to answer a page of its task list holding `tasks` tasks
    (read from a result backend at its start), unfiltered, sorted, filtered and searched."""
    from starlette.testclient import TestClient

    from conveyor import Celery, states
    from conveyor.dashboard import create_app

    app = Celery("bench-dashboard", broker="memory://bench-dashboard")
    names, results = ("app.resize", "app.mail", "app.report"), ("SUCCESS", "FAILURE", "SUCCESS")
    app.backend.write([
        app.backend.make_update(f"task-{i}", results[i % 3] if i % 7 else states.RETRY, i, history={
            "name": names[i % 3], "worker": f"w{i % 4}@host", "runtime": (i % 1000) / 1000})
        for i in range(tasks)
    ])  # fmt: skip
    rows = []
    with TestClient(create_app(app)) as client:
        while client.get("/api/dashboard/tasks?limit=1").json()["total"] < tasks:
            time.sleep(0.05)  # read from the backend at start
        for label, query in (("newest first", ""), ("sorted by runtime", "&sort_by=-runtime"),
                             ("one state, one task", "&state=FAILURE&taskname=app.mail"),
                             ("searched", "&search=task-4242")):  # fmt: skip
            seconds = []
            for _ in range(5):
                started = time.perf_counter()
                assert client.get(f"/api/dashboard/tasks?limit=50{query}").status_code == 200
                seconds.append(time.perf_counter() - started)
            rows.append((f"dashboard task list of {tasks:,}, a page of 50, {label}",
                         f"{statistics.median(seconds) * 1000:.0f} ms"))  # fmt: skip
    app.close()
    return rows


def fresh_app(url: str, backend: str | None = None):  # type: ignore[no-untyped-def]
    sys.modules.pop("benchmarks.bench_app", None)
    os.environ["CONVEYOR_BENCH_BROKER"] = url
    os.environ["CONVEYOR_BENCH_BACKEND"] = backend or ""
    os.environ["CONVEYOR_BENCH_PREFIX"] = PREFIX
    from benchmarks import bench_app

    return bench_app.app, bench_app.noop


def measure(
    url: str, tasks: int, pool: str, concurrency: int, prefetch: int, backend: str | None = None
) -> list[tuple[str, str]]:
    env = {**os.environ, "CONVEYOR_BENCH_BROKER": url, "CONVEYOR_BENCH_BACKEND": backend or "",
           "CONVEYOR_BENCH_PREFIX": PREFIX, "PYTHONPATH": str(ROOT)}  # fmt: skip
    app, noop = fresh_app(url, backend)
    if pool == "asyncio":
        noop = app.tasks["bench.anoop"]
    name = noop.name
    rows: list[tuple[str, str]] = []

    started = time.perf_counter()
    for i in range(tasks):
        noop.delay(i)
    enqueue = tasks / (time.perf_counter() - started)
    rows.append(("enqueue, one delay() per call", f"{enqueue:,.0f} tasks/s"))
    app.broker.purge(["celery"])

    from conveyor.brokers.base import Outgoing

    bodies = [app.producer.message(name, (i,))[0].encode(format=app.conf.task_message_format) for i in range(tasks)]
    started = time.perf_counter()
    for offset in range(0, tasks, 1000):
        app.broker.publish([Outgoing("celery", body) for body in bodies[offset : offset + 1000]])
    batch = tasks / (time.perf_counter() - started)
    rows.append(("publish, batches of 1,000", f"{batch:,.0f} tasks/s"))
    app.broker.purge(["celery"])
    rows.extend(signing_costs(bodies[0]))

    from conveyor import group

    signatures = [noop.s(i) for i in range(tasks)]
    started = time.perf_counter()
    for offset in range(0, tasks, 1000):
        group(signatures[offset : offset + 1000]).apply_async()
    rows.append(("group() of 1,000, built and sent", f"{tasks / (time.perf_counter() - started):,.0f} tasks/s"))
    app.broker.purge(["celery"])

    with worker(env, pool, concurrency, prefetch) as process:
        idle_rss = rss_mib(process.pid)
        latencies = []
        for i in range(300):
            sent = time.perf_counter()
            noop.delay(i).get(timeout=10)
            latencies.append((time.perf_counter() - sent) * 1000)
        latencies.sort()
        p50 = statistics.median(latencies)
        p99 = latencies[int(len(latencies) * 0.99) - 1]
        rows.append(("round trip delay().get(), idle worker", f"p50 {p50:.2f} ms, p99 {p99:.2f} ms"))
        control = app.conf.worker_enable_remote_control
        if control:
            rows.append(("control ping round trip, idle worker", f"p50 {control_ping(app):.2f} ms"))

        pings: list[float] = []
        for ignore_result in (False, True):
            # The control channel while the worker drains: it answers apart from the pool.
            during = (lambda: pings.append(control_ping(app, 20))) if control and not ignore_result else None
            rate = drain(app, name, "celery", tasks, ignore_result, during)
            label = "ignored" if ignore_result else "stored"
            rows.append((f"drain, one worker, results {label}", f"{rate:,.0f} tasks/s"))
            if pings and not ignore_result:
                rows.append(("control ping round trip, during the drain", f"p50 {pings[0]:.2f} ms"))
        rows.append(("worker RSS idle / after", f"{idle_rss:.0f} MiB / {rss_mib(process.pid):.0f} MiB"))
    # As users start it (prefork, a child per core, Celery's prefetch), then as measured above.
    events_us, events_rows = events_cost(app)
    rows.extend(events_rows)
    rows.extend(cost_of_defaults(app, noop, env, "prefork", os.cpu_count() or 1, 4, tasks, "default worker", events_us))
    rows.extend(cost_of_defaults(app, noop, env, pool, concurrency, prefetch, tasks, f"-P {pool}", events_us))
    rows.extend(dashboard_task_list())
    app.close()
    return rows


def drain(app, name: str, queue: str, tasks: int, ignore_result: bool, during=None, workers: int = 1) -> float:  # type: ignore[no-untyped-def]
    """Tasks per second the `workers` of `queue` drain: publish in batches (milliseconds), then
    time until they are through. `during()` runs while they drain."""
    from conveyor.brokers.base import Outgoing

    call = app.producer.options({"ignore_result": ignore_result})
    messages = [app.producer.message(name, (i,), call=call)[0] for i in range(tasks)]
    bodies = [m.encode(format=app.conf.task_message_format) for m in messages]
    started = time.perf_counter()
    for offset in range(0, tasks, 1000):
        app.broker.publish([Outgoing(queue, body) for body in bodies[offset : offset + 1000]])
    if during is not None:
        during()
    if ignore_result or workers > 1:  # through once every message is acknowledged
        while app.broker.queue_sizes([queue])[queue]:
            time.sleep(0.002)
    else:
        # FIFO: once the last result is stored, the others are too (checked below).
        app.AsyncResult(messages[-1].id).get(timeout=300)
    rate = tasks / (time.perf_counter() - started)
    if not ignore_result:
        assert all(app.AsyncResult(m.id).successful() for m in messages[:: max(1, tasks // 100)])
    return rate


#: Rounds of the defaults' cost: each drains on every worker, back to back, in a turning order.
#: Many short rounds: the median of their paired changes settles where few long ones do not.
COST_ROUNDS = 36
#: The workers are started anew this many times in a run: a worker process can be several percent
#: faster or slower than an identical one for its whole life, which no number of rounds evens out.
COST_SESSIONS = 6
#: Tasks per drain there (or `--tasks`, if fewer): a drain of less than a second or so varies
#: too much from one to the next (two identical workers were 10-20 % apart at 5,000 on SQLite).
COST_DRAIN = 10_000


def events_cost(app, tasks: int = 32_000) -> tuple[float, list[tuple[str, str]]]:  # type: ignore[no-untyped-def]
    """What task events cost a worker, measured apart from everything else, at a resolution the
    drains below cannot reach on a machine whose speed drifts by tens of percent: the hook of a
    real (not running) worker told of `tasks` ended tasks, 64 at a time as a busy worker's batches
    go, each batch's record encoded; then those records written to `app`'s state store one call
    each, as the worker's writer does. Best of 5 passes each. Returns the microseconds per task
    of both together, and the rows."""
    import uuid

    from conveyor import Conveyor
    from conveyor.brokers.base import Delivery
    from conveyor.execution import Job, Outcome
    from conveyor.messages import Message
    from conveyor.worker.events import TaskEvents
    from conveyor.worker.hooks import Held
    from conveyor.worker.worker import Worker

    hook_app = Conveyor("bench-events", broker=f"memory://bench-events-{os.getpid()}")
    hook = TaskEvents()
    hook.start(Worker(hook_app, pool="solo", hooks=[hook]))
    now = time.time()
    ended = []
    for i in range(tasks):
        message = Message(task="bench.noop", id=str(uuid.uuid4()), args=(i,))
        held = Held(Job(i, message, "celery", "w@bench"), Delivery("celery", b"", None), now, started=True,
                    pid=os.getpid(), started_at=now)  # fmt: skip
        ended.append((held, Outcome(i, message.id, "SUCCESS", 0.0001, repr(i))))
    records = hook.events.events
    hook_passes, write_passes = [], []
    for _ in range(5):
        records.clear()
        started = time.perf_counter()
        for offset in range(0, tasks, 64):
            for held, outcome in ended[offset : offset + 64]:
                hook.finished(held, outcome)
            hook.flush()
        hook_passes.append((time.perf_counter() - started) / tasks * 1e6)
        started = time.perf_counter()
        for record in records:
            app.state.add_events([record])
        app.confirm_published()  # a store whose writes are not waited for (Redis) has sent them
        write_passes.append((time.perf_counter() - started) / tasks * 1e6)
    written = sum(map(len, records)) / tasks
    hook_app.close()
    hook_us, write_us = min(hook_passes), min(write_passes)
    return hook_us + write_us, [
        ("task events in the worker (hook and record encoding), per task", f"{hook_us:.2f} µs, {written:.0f} bytes"),
        ("task events written to the store (one record per 64 tasks), per task", f"{write_us:.2f} µs"),
    ]


def cost_of_defaults(app, noop, env, pool, concurrency, prefetch, tasks, label, events_us) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    """What task events and remote control (both on by default) cost: the same drains and round
    trips on two workers as configured and two with both off, side by side, over COST_ROUNDS
    rounds; the figure of each kind is the mean of its two workers. As the measure of what this
    comparison can resolve, the same comparison between two mixed pairs (one worker of each kind
    on each side), which differ by nothing.

    This machine's speed drifts by tens of percent within seconds, so each round runs the
    workers on the same load moments apart, in a turning order, and the figure is the median of
    the rounds' paired changes, over drains of COST_DRAIN tasks, with the workers started anew
    COST_SESSIONS times (and two of each kind) since a worker process can be faster or slower
    than an identical one for its whole life. Beside the rates, the workers' CPU time per task,
    and what the events measured apart (`events_us` per task, `events_cost`) are of the plain
    workers'."""
    from benchmarks.compare import cpu_seconds  # of a session: a worker starts one (see worker())

    plain_env = {**env, "CONVEYOR_BENCH_EVENTS": "0", "CONVEYOR_BENCH_CONTROL": "0"}
    # Queue, worker name (each its own: two workers of one name would share a control queue and
    # a registry entry) and settings.
    arms = [("celery", "default@bench", env), ("default2", "default2@bench", env),
            ("plain", "plain@bench", plain_env), ("plain2", "plain2@bench", plain_env)]  # fmt: skip
    figures: dict[tuple[str, str], list[float]] = {}
    drained = min(tasks, COST_DRAIN)
    round_ = 0
    for _ in range(COST_SESSIONS):
        with contextlib.ExitStack() as stack:
            workers = [
                (queue, stack.enter_context(worker(settings, pool, concurrency, prefetch, "-Q", queue, "-n", name)))
                for queue, name, settings in arms
            ]
            for _ in range(COST_ROUNDS // COST_SESSIONS):
                turn = round_ % len(workers)  # each goes first, second, ... last equally often: drift cancels out
                round_ += 1
                order = workers[turn:] + workers[:turn]
                for ignore_result in (False, True):
                    kind = "ignored" if ignore_result else "stored"
                    for queue, process in order:
                        before = cpu_seconds(process.pid)
                        rate = drain(app, noop.name, queue, drained, ignore_result)
                        figures.setdefault((queue, kind), []).append(rate)
                        time.sleep(0.2)  # the last writes' CPU counted too
                        cpu = (cpu_seconds(process.pid) - before) / drained * 1e6
                        figures.setdefault((queue, f"{kind} cpu"), []).append(cpu)
                for queue, _ in order:
                    trips = []
                    for i in range(200):
                        sent = time.perf_counter()
                        noop.apply_async((i,), queue=queue).get(timeout=10)
                        trips.append((time.perf_counter() - sent) * 1000)
                    figures.setdefault((queue, "trip"), []).append(statistics.median(trips))

    def pair(kind: str, queues: tuple[str, str]) -> list[float]:
        """Each round's mean figure of two workers."""
        first, second = (figures[(queue, kind)] for queue in queues)
        return [(a + b) / 2 for a, b in zip(first, second, strict=True)]

    configured, plain = ("celery", "default2"), ("plain", "plain2")

    def change(kind: str, on: tuple[str, str] = configured, off: tuple[str, str] = plain) -> tuple[float, float, float]:
        """Median figures of the `on` and `off` pairs, and the median of the rounds' paired changes (%)."""
        of_on, of_off = pair(kind, on), pair(kind, off)
        paired = statistics.median((a - b) / b * 100 for a, b in zip(of_on, of_off, strict=True))
        return statistics.median(of_on), statistics.median(of_off), paired

    rows = []
    shares = [f"{events_us / statistics.median(pair(kind + ' cpu', plain)) * 100:.1f} % (results {kind})"
              for kind in ("stored", "ignored")]  # fmt: skip
    rows.append((f"task events measured apart, of the plain workers' CPU per task, {label}", ", ".join(shares)))
    for kind in ("stored", "ignored"):
        on, off, rate_change = change(kind)
        cpu_on, cpu_off, cpu_change = change(f"{kind} cpu")
        rows.append((f"events + remote control on (default) vs off, {label}: drain, results {kind}",
                     f"{on:,.0f} vs {off:,.0f} tasks/s ({rate_change:+.1f} %); worker CPU {cpu_on:.1f} vs "
                     f"{cpu_off:.1f} µs/task ({cpu_change:+.1f} %)"))  # fmt: skip
    on, off, trip_change = change("trip")
    rows.append((f"events + remote control on (default) vs off, {label}: round trip p50",
                 f"{on:.2f} vs {off:.2f} ms ({trip_change:+.1f} %)"))  # fmt: skip
    mixed_pairs = (configured[0], plain[0]), (configured[1], plain[1])
    mixed = [change(kind, *mixed_pairs)[2] for kind in ("stored", "ignored", "trip")]
    rows.append((f"the same comparison of two mixed pairs (what it resolves), {label}",
                 "drain stored {:+.1f} %, ignored {:+.1f} %; round trip {:+.1f} %".format(*mixed)))  # fmt: skip
    return rows


#: The fixed windows (prefetch multipliers, adaptation off) the adaptive one is measured against.
FIXED_WINDOWS = (4, 16, 64, 256)


def windows(url: str, tasks: int, runs: int) -> list[tuple[str, str]]:
    """Two default workers (prefork, a child per core) drain `tasks` no-op tasks from one queue,
    with the adaptive window and with each fixed window: each drain against the best fixed one."""
    env = {**os.environ, "CONVEYOR_BENCH_BROKER": url, "CONVEYOR_BENCH_BACKEND": "",
           "CONVEYOR_BENCH_PREFIX": PREFIX, "PYTHONPATH": str(ROOT)}  # fmt: skip
    app, noop = fresh_app(url)
    concurrency = os.cpu_count() or 1
    drains: dict[str, float] = {}
    for multiplier in (None, *FIXED_WINDOWS):
        label = "adaptive (multiplier 4 as the floor)" if multiplier is None else f"fixed, multiplier {multiplier}"
        both = ({**env, "CONVEYOR_BENCH_ADAPTIVE": "0"} if multiplier else env, "prefork", concurrency, multiplier or 4)
        with worker(*both), worker(*both):
            rates = [drain(app, noop.name, "celery", tasks, False, workers=2) for _ in range(runs)]
            drains[label] = statistics.median(rates)
    app.close()
    best = max(rate for label, rate in drains.items() if label.startswith("fixed"))
    return [(label, f"{rate:,.0f} tasks/s ({rate / best:.0%} of the best fixed)") for label, rate in drains.items()]


@contextmanager
def store(broker: str) -> Iterator[str]:
    """The URL of the broker to measure, left as it was found afterwards: the benchmark's Redis
    keys deleted (RabbitMQ keeps its results and state there), a SQLite file in a directory of its own."""
    if broker == "sqlite":
        with tempfile.TemporaryDirectory() as directory:
            yield f"sqlite:///{directory}/bench.db"
        return
    try:
        yield REDIS_URL if broker == "redis" else AMQP_URL
    finally:
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(f"{PREFIX}*", count=10_000))
        for offset in range(0, len(keys), 10_000):  # a million results: one call per 10,000, not per key
            client.unlink(*keys[offset : offset + 10_000])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--broker",
        default="sqlite",
        choices=["sqlite", "redis", "amqp"],
        help="which broker to measure (amqp: RabbitMQ, with results and state on Redis)",
    )
    parser.add_argument("--tasks", type=int, default=10_000, help="tasks per measurement")
    parser.add_argument("--pool", default="solo", help="worker pool (solo, threads, prefork, asyncio: an async no-op)")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--prefetch-multiplier", type=int, default=64, help="the worker's prefetch multiplier")
    parser.add_argument("--peers", nargs="*", help="compare with peers on Redis (all, or the ones named)")
    parser.add_argument(
        "--defaults",
        action="store_true",
        help="every worker command as its README starts it, and tuned ones, on Redis and SQLite (20,000 tasks)",
    )
    parser.add_argument("--floor", action="store_true", help="measure this machine's Redis round trips")
    parser.add_argument(
        "--windows",
        action="store_true",
        help="two default workers draining one queue: the adaptive prefetch window against fixed ones",
    )
    parser.add_argument("--runs", type=int, default=1, help="with --peers: runs per figure (median)")
    parser.add_argument("--trips", type=int, default=300, help="with --peers: round trips for latency")
    parser.add_argument(
        "--markdown",
        type=Path,
        metavar="PAGE",
        help="also write the table into PAGE (docs/benchmarks.md), replacing the one this command wrote before",
    )
    args = parser.parse_args()
    if args.floor:
        from benchmarks import floor

        title = "Redis round trips on this machine (median)"
        report.show("floor", title, ("measure", "result"), floor.rows(), args.markdown)
        return
    if args.windows:
        tasks = args.tasks if args.tasks != parser.get_default("tasks") else 20_000
        with store(args.broker) as url:
            rows = windows(url, tasks, args.runs)
        title = f"Prefetch windows, two default workers on {args.broker}: {tasks:,} no-op tasks, median of {args.runs}"
        report.show(f"windows-{args.broker}", title, ("window", "drain, results stored"), rows, args.markdown)
        return
    if args.defaults:
        from benchmarks import compare

        tasks = args.tasks if args.tasks != parser.get_default("tasks") else 20_000
        title, columns, peer_rows = compare.defaults_main(tasks, args.trips, args.runs)
        report.show("defaults", title, columns, peer_rows, args.markdown)
        return
    if args.peers is not None:
        from benchmarks import compare

        title, columns, peer_rows = compare.main(args.tasks, args.trips, args.runs, args.peers or None)
        report.show("peers", title, columns, peer_rows, args.markdown)
        return
    with store(args.broker) as url:
        backend = REDIS_URL if args.broker == "amqp" else None
        rows = measure(url, args.tasks, args.pool, args.concurrency, args.prefetch_multiplier, backend)
    title = (
        f"Conveyor on {args.broker}: {args.tasks:,} no-op tasks, -P {args.pool} -c {args.concurrency}"
        f" --prefetch-multiplier {args.prefetch_multiplier}"
    )
    report.show(f"conveyor-{args.broker}", title, ("measure", "result"), rows, args.markdown)


if __name__ == "__main__":
    main()
