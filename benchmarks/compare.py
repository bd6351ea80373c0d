"""Conveyor against Celery, Dramatiq, RQ, arq, Huey and Taskiq on the same Redis, in one run.

    ./scripts/bench --broker redis --peers            # installs the `bench` extra (the peers)

The workload is the peers' common one: N no-op tasks
whose body INCRs a Redis counter; enqueued one call at a time with no worker
running; then ONE worker process is spawned and timed until the counter
reaches N ("drain", from spawn, the peers' method; "steady" from the first
completion). CPU per task, over that steady part: the worker's processes (its
session) and the Redis server (what limits a drain on a 2-core machine: a
worker's Python runs on one core at a time). Latency: sequential submit-and-wait calls against the idle
worker. Redis memory per queued task is the growth of `used_memory` over the
enqueue. Each peer gets its own Redis database, flushed before use.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parents[1]
BASE_URL = os.environ.get("CONVEYOR_REDIS_BENCH_URL", "redis://127.0.0.1:6379")


@dataclass
class Peer:
    name: str
    db: int
    worker: Callable[[str], list[str]]
    enqueue: Callable[[int], None]
    """Enqueue tasks 0..n-1, one call each."""
    round_trips: Callable[[int], list[float]]
    """k sequential submit-and-wait calls; their latencies in ms."""


def _each(n: int, one: Callable[[int], Any]) -> None:
    for i in range(n):
        one(i)


def _timed(calls: int, one: Callable[[int], Any]) -> list[float]:
    out = []
    for i in range(calls):
        started = time.perf_counter()
        one(i)
        out.append((time.perf_counter() - started) * 1000)
    return out


def _bin(name: str) -> str:
    return shutil.which(name, path=str(Path(sys.executable).parent)) or name


def conveyor_peer(name: str = "Conveyor -P solo", pool: tuple[str, ...] = ("-P", "solo")) -> Peer:
    from benchmarks.peers.conveyor_app import noop

    return Peer(
        name,
        0,
        lambda url: [sys.executable, "-m", "conveyor.cli", "-A", "benchmarks.peers.conveyor_app", "worker",
                     *pool, "-l", "warning"],
        lambda n: _each(n, noop.delay),
        lambda k: _timed(k, lambda i: noop.delay(i).get(timeout=10)),
    )  # fmt: skip


def celery_peer(name: str = "Celery 5 (solo)", pool: tuple[str, ...] = ("-P", "solo")) -> Peer:
    from benchmarks.peers.celery_app import noop

    return Peer(
        name,
        0,
        lambda url: [sys.executable, "-m", "celery", "-A", "benchmarks.peers.celery_app", "worker", *pool,
                     "-l", "warning"],
        lambda n: _each(n, noop.delay),
        lambda k: _timed(k, lambda i: noop.delay(i).get(timeout=10)),
    )  # fmt: skip


def dramatiq_peer(name: str = "Dramatiq", options: tuple[str, ...] = ("-p", "1")) -> Peer:
    from benchmarks.peers.dramatiq_app import noop

    return Peer(
        name,
        0,
        lambda url: [sys.executable, "-m", "dramatiq", "benchmarks.peers.dramatiq_app", *options],
        lambda n: _each(n, noop.send),
        lambda k: _timed(k, lambda i: noop.send(i).get_result(block=True, timeout=10_000)),
    )


def rq_peer() -> Peer:
    from rq import Queue

    from benchmarks.peers.common import RESULTS
    from benchmarks.peers.rq_app import noop

    queue = Queue(connection=redis.Redis.from_url(os.environ["BENCH_REDIS_URL"]))
    ttl = 500 if RESULTS else 0
    return Peer(
        "RQ (SimpleWorker)",
        0,
        lambda url: [_bin("rq"), "worker", "--worker-class", "rq.worker.SimpleWorker", "--url", url, "-q"],
        lambda n: _each(n, lambda i: queue.enqueue(noop, i, result_ttl=ttl)),
        lambda k: _timed(k, lambda i: queue.enqueue(noop, i, result_ttl=ttl).latest_result(timeout=10)),
    )


def huey_peer(name: str = "Huey", options: tuple[str, ...] = ("-w", "1", "-q")) -> Peer:
    from benchmarks.peers.huey_app import noop

    return Peer(
        name,
        0,
        lambda url: [_bin("huey_consumer"), "benchmarks.peers.huey_app.huey", *options],
        lambda n: _each(n, noop),
        lambda k: _timed(k, lambda i: noop(i).get(blocking=True, timeout=10)),
    )


def arq_peer() -> Peer:
    from arq import create_pool
    from arq.jobs import ResultNotFound

    from benchmarks.peers.arq_app import WorkerSettings

    async def enqueue(n: int) -> None:
        pool = await create_pool(WorkerSettings.redis_settings)
        for i in range(n):
            await pool.enqueue_job("noop", i)
        await pool.aclose()

    async def trips(k: int) -> list[float]:
        pool = await create_pool(WorkerSettings.redis_settings)
        out = []
        for i in range(k):
            started = time.perf_counter()
            job = await pool.enqueue_job("noop", i)
            while True:
                try:
                    await job.result(timeout=10, poll_delay=0.005)
                    break
                except ResultNotFound:  # raced the worker between "in progress" and "complete"
                    await asyncio.sleep(0.005)
            out.append((time.perf_counter() - started) * 1000)
        await pool.aclose()
        return out

    return Peer(
        "arq (5 ms polls)",
        0,
        lambda url: [_bin("arq"), "benchmarks.peers.arq_app.WorkerSettings"],
        lambda n: asyncio.run(enqueue(n)),
        lambda k: asyncio.run(trips(k)),
    )


def taskiq_peer() -> Peer:
    from benchmarks.peers.taskiq_app import broker, noop

    async def enqueue(n: int) -> None:
        await broker.startup()
        for i in range(n):
            await noop.kiq(i)
        await broker.shutdown()

    async def trips(k: int) -> list[float]:
        await broker.startup()
        out = []
        for i in range(k):
            started = time.perf_counter()
            task = await noop.kiq(i)
            await task.wait_result(check_interval=0.005, timeout=10)
            out.append((time.perf_counter() - started) * 1000)
        await broker.shutdown()
        return out

    return Peer(
        "Taskiq (5 ms checks)",
        0,
        lambda url: [_bin("taskiq"), "worker", "benchmarks.peers.taskiq_app:broker", "--workers", "1"],
        lambda n: asyncio.run(enqueue(n)),
        lambda k: asyncio.run(trips(k)),
    )


PEERS: dict[str, tuple[int, Callable[[], Peer]]] = {
    "conveyor": (8, conveyor_peer),
    # Threads overlap the task bodies' own Redis round trips, as Dramatiq's 8 worker threads do.
    "conveyor-threads": (
        6,
        lambda: conveyor_peer(
            "Conveyor -P threads -c 4 --prefetch-multiplier 16",
            ("-P", "threads", "-c", "4", "--prefetch-multiplier", "16"),
        ),
    ),
    "celery": (9, celery_peer),
    "dramatiq": (10, dramatiq_peer),
    "rq": (11, rq_peer),
    "huey": (12, huey_peer),
    "arq": (13, arq_peer),
    "taskiq": (7, taskiq_peer),
}


def on_sqlite(make: Callable[[], Peer]) -> Callable[[], Peer]:
    """The peer on an embedded SQLite file of its own (the completion counter stays on Redis)."""

    def factory() -> Peer:
        directory = tempfile.mkdtemp(prefix="conveyor-bench-")
        os.environ["BENCH_BROKER_URL"] = f"sqlite:///{directory}/conveyor.db"
        os.environ["BENCH_SQLITE"] = f"{directory}/huey.db"
        return make()

    return factory


TUNED = ("-P", "solo", "--prefetch-multiplier", "64")

#: The worker commands as the peers' READMEs start them (no flags), then tuned rows beside them;
#: name -> (Redis database, factory, whether it is a peer's default command).
DEFAULTS: dict[str, tuple[int, Callable[[], Peer], bool]] = {
    "conveyor": (8, lambda: conveyor_peer("conveyor -A tasks worker", ()), False),
    "dramatiq": (10, lambda: dramatiq_peer("dramatiq tasks", ()), True),
    "huey": (12, lambda: huey_peer("huey_consumer tasks.huey", ()), True),
    "celery": (9, lambda: celery_peer("celery -A tasks worker", ()), True),
    "conveyor-tuned": (8, lambda: conveyor_peer("conveyor ... -P solo --prefetch-multiplier 64", TUNED), False),
    "dramatiq-tuned": (10, lambda: dramatiq_peer("dramatiq tasks -p 1 -t 8", ("-p", "1", "-t", "8")), False),
    "conveyor-sqlite": (8, on_sqlite(lambda: conveyor_peer("conveyor -A tasks worker (SQLite)", ())), False),
    "huey-sqlite": (12, on_sqlite(lambda: huey_peer("huey_consumer tasks.huey (SqliteHuey)", ())), True),
    "conveyor-sqlite-tuned": (
        8,
        on_sqlite(lambda: conveyor_peer("conveyor ... -P solo --prefetch-multiplier 64 (SQLite)", TUNED)),
        False,
    ),
}  # fmt: skip


def defaults_main(tasks: int, trips: int, runs: int) -> tuple[str, list[str], list[list[str]]]:
    """Every command of DEFAULTS `runs` times (medians); each row's drain against the best peer
    default on the same store."""
    from rich.console import Console

    console = Console()
    peers = {key: (db, factory) for key, (db, factory, _) in DEFAULTS.items()}
    measured: dict[str, tuple[str, dict[str, float], dict[str, float]]] = {}
    for key in DEFAULTS:
        try:
            stored = [run_peer(key, tasks, trips, True, peers) for _ in range(runs)]
            ignored = [run_peer(key, tasks, trips, False, peers)[1] for _ in range(runs)]
        except Exception as exc:  # one peer failing must not lose the others' figures
            console.print(f"{key} failed: {exc!r}", style="red", markup=False)
            continue
        medians = {f: statistics.median(row[f] for _, row in stored) for f in stored[0][1]}
        measured[key] = (stored[0][0], medians, {"drain": statistics.median(r["drain"] for r in ignored)})
        console.print(f"done: {stored[0][0]}", markup=False)

    def best_peer(sqlite: bool) -> float:
        drains = [m[1]["drain"] for k, m in measured.items() if DEFAULTS[k][2] and k.endswith("-sqlite") == sqlite]
        return max(drains, default=float("nan"))

    rows = []
    for key, (name, stored_row, ignored_row) in measured.items():
        sqlite = "sqlite" in key
        rows.append([
            name, "SQLite" if sqlite else "Redis", f"{stored_row['drain']:,.0f}",
            f"{stored_row['drain'] / best_peer(sqlite):.2f}x", f"{ignored_row['drain']:,.0f}",
            f"{stored_row['cpu']:,.0f} ({stored_row['main_cpu']:,.0f})", f"{stored_row['p50']:.2f}",
            "-" if sqlite else f"{stored_row['bytes']:,.0f}",
        ])  # fmt: skip
    title = f"Worker commands as users start them: {tasks:,} tasks, each INCRs a Redis counter, median of {runs}"
    columns = ["worker command", "store", "drain/s stored", "vs best peer default", "drain/s ignored",
               "worker CPU µs/task (main process)", "p50 ms", "bytes/queued task"]  # fmt: skip
    return title, columns, rows


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def cpu_seconds(session: int) -> float:
    """CPU time (user + system) of every live process in a session: a peer's worker and any
    processes it forked (Dramatiq's worker is a child of its launcher)."""
    ticks = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        if int(fields[3]) == session:  # fields[3] is the session id (field 6 of stat)
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of one process alone: a worker's main process, without the
    children it forked (a prefork pool's)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def redis_cpu_seconds(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def run_peer(
    key: str, tasks: int, trips: int, results: bool, peers: dict[str, tuple[int, Callable[[], Peer]]] | None = None
) -> tuple[str, dict[str, float]]:
    db, factory = (peers or PEERS)[key]
    for name in ("BENCH_BROKER_URL", "BENCH_SQLITE"):  # set by a peer on SQLite, for itself alone
        os.environ.pop(name, None)
    url = f"{BASE_URL}/{db}"
    os.environ["BENCH_REDIS_URL"] = url
    os.environ["BENCH_RESULTS"] = "1" if results else "0"
    client = redis.Redis.from_url(url)
    client.flushdb()
    for module in [m for m in sys.modules if m.startswith("benchmarks.peers.")]:
        del sys.modules[module]
    peer = factory()
    before = client.info("memory")["used_memory"]
    started = time.perf_counter()
    peer.enqueue(tasks)
    enqueue_rate = tasks / (time.perf_counter() - started)
    per_task = (client.info("memory")["used_memory"] - before) / tasks
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    spawned = time.perf_counter()
    worker = subprocess.Popen(peer.worker(url), cwd=ROOT, env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        first = None
        deadline = time.monotonic() + 600
        while True:
            done = int(client.get("bench:done") or 0)
            if done and first is None:
                first = (time.perf_counter(), done)
                cpu_first, redis_first = cpu_seconds(worker.pid), redis_cpu_seconds(client)
                main_first = process_cpu_seconds(worker.pid)
            if done >= tasks:
                break
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{peer.name} worker stopped or stalled at {done}/{tasks}")
            time.sleep(0.002)
        finished = time.perf_counter()
        assert first is not None
        cpu_per_task = (cpu_seconds(worker.pid) - cpu_first) / max(tasks - first[1], 1) * 1e6
        main_per_task = (process_cpu_seconds(worker.pid) - main_first) / max(tasks - first[1], 1) * 1e6
        redis_per_task = (redis_cpu_seconds(client) - redis_first) / max(tasks - first[1], 1) * 1e6
        drain = tasks / (finished - spawned)
        steady = (tasks - first[1]) / max(finished - first[0], 1e-9)
        latency = sorted(peer.round_trips(trips)) if results else []
        rss = rss_mib(worker.pid)
    finally:
        try:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(worker.pid, signal.SIGKILL)
    client.flushdb()
    if os.environ.get("BENCH_SQLITE"):
        shutil.rmtree(Path(os.environ["BENCH_SQLITE"]).parent, ignore_errors=True)
    row = {"enqueue": enqueue_rate, "drain": drain, "steady": steady, "bytes": per_task, "rss": rss,
           "cpu": cpu_per_task, "main_cpu": main_per_task, "redis_cpu": redis_per_task}  # fmt: skip
    if latency:
        row["p50"] = statistics.median(latency)
        row["p99"] = latency[max(0, int(len(latency) * 0.99) - 1)]
    return peer.name, row


def main(tasks: int, trips: int, runs: int, only: list[str] | None) -> tuple[str, list[str], list[list[str]]]:
    """Run each peer `runs` times; return the table's title, columns and one row per peer (medians)."""
    from rich.console import Console

    console = Console()
    keys = only or list(PEERS)
    title = f"{tasks:,} no-op tasks on Redis, one worker process, median of {runs}"
    columns = ["queue", "enqueue/s", "drain/s stored", "steady/s stored", "drain/s ignored",
               "worker CPU µs/task", "Redis CPU µs/task", "p50 ms", "p99 ms", "bytes/queued task",
               "worker RSS MiB"]  # fmt: skip
    rows: list[list[str]] = []
    for key in keys:
        try:
            named = [run_peer(key, tasks, trips, True) for _ in range(runs)]
            ignored = [run_peer(key, tasks, trips, False)[1] for _ in range(runs)]
        except Exception as exc:  # one peer failing must not lose the others' figures
            console.print(f"{key} failed: {exc!r}", style="red", markup=False)
            continue
        name, stored = named[0][0], [row for _, row in named]

        def med(rows: list[dict[str, float]], field: str) -> float:
            return statistics.median(r[field] for r in rows)

        rows.append([
            name, f"{med(stored, 'enqueue'):,.0f}", f"{med(stored, 'drain'):,.0f}", f"{med(stored, 'steady'):,.0f}",
            f"{med(ignored, 'drain'):,.0f}", f"{med(stored, 'cpu'):,.0f}", f"{med(stored, 'redis_cpu'):,.0f}",
            f"{med(stored, 'p50'):.2f}", f"{med(stored, 'p99'):.2f}",
            f"{med(stored, 'bytes'):,.0f}", f"{med(stored, 'rss'):.0f}",
        ])  # fmt: skip
        console.print(f"done: {name}", markup=False)
    return title, columns, rows
