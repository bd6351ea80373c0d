"""What this machine allows: Redis round trips through redis-py, back to back and after idling.

    ./scripts/bench --floor

A task queue cannot beat these. `delay().get()` crosses at least four
process wake-ups (producer -> Redis -> worker -> Redis -> producer); the
"after 5 ms idle" row is what one costs when the other side was asleep,
which is the normal case for a round trip on an idle worker. The "Python after
idling" row is the same effect on plain Python work: on a virtual machine, code
that runs right after its process slept runs several times slower than warm
code (caches and TLBs refilled after the vCPU halted), and every step of a
round trip runs right after a sleep. The relay row
is that round trip with no queue at all: a second process blocks in BLPOP
and answers each message with an LPUSH the caller blocks on (what a queue
could do with no lease, no result record, nothing decoded). The last rows
run the peer comparison's task body alone (one INCR through the redis-py
client) on 1 and 4 threads of one process, and its CPU time per call: no
queue drains that workload faster than its body runs, and a worker process
spends that CPU under the GIL besides its own.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import statistics
import threading
import time
from collections.abc import Callable

import redis

URL = os.environ.get("CONVEYOR_REDIS_URL", "redis://127.0.0.1:6379/14")


def _median_us(call: Callable[[], object], n: int, idle: float = 0.0) -> float:
    samples = []
    for _ in range(n):
        if idle:
            time.sleep(idle)
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1e6)
    return statistics.median(samples)


def rows(n: int = 3000) -> list[tuple[str, str]]:
    client = redis.Redis.from_url(URL)
    connection = client.connection_pool.get_connection()

    def raw_ping() -> object:
        connection.send_command("PING")
        return connection.read_response()

    client.ping()
    out = []
    for label, call in (("redis-py client", client.ping), ("redis-py connection", raw_ping)):
        per_call = _median_us(call, n)
        out.append((f"PING back to back, {label}", f"{per_call:.0f} µs ({1e6 / per_call:,.0f}/s)"))
    out.append(("PING after 5 ms idle, redis-py connection", f"{_median_us(raw_ping, 300, idle=0.005):.0f} µs"))
    small = {"id": "5bca8298-be65-4180-a587-4551a5c5ca12", "args": [1], "kwargs": {}}

    def encode() -> object:
        return json.dumps(small)

    out.append(("Python after idling: json.dumps of a 3-key dict, warm / after 1 ms / after 10 ms asleep",
                " / ".join(f"{_median_us(encode, 300, idle):.1f}" for idle in (0, 0.001, 0.01)) + " µs"))  # fmt: skip
    connection.disconnect()
    out.append(("round trip through a relay process (LPUSH, BLPOP; no queue)", _relay(client, 1000)))
    for threads in (1, 4):
        out.append((f"the peer workload's body alone (INCR, redis-py client), {threads} thread(s)",
                    f"{_incr_rate(client, threads, n):,.0f}/s"))  # fmt: skip
    started = time.process_time()
    for _ in range(n):
        client.incr("bench:floor")
    cpu_us = (time.process_time() - started) / n * 1e6
    out.append(("CPU time of one such INCR in the calling process", f"{cpu_us:.0f} µs"))
    client.delete("bench:floor")
    client.close()
    return out


def _relay(client: redis.Redis, n: int) -> str:
    client.delete("bench:floor:ask", "bench:floor:answer")
    relay = multiprocessing.get_context("spawn").Process(target=_answer, args=(URL, n), daemon=True)
    relay.start()
    client.lpush("bench:floor:ask", b"warm-up")
    client.blpop(["bench:floor:answer"], 10)
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        client.lpush("bench:floor:ask", b"x")
        client.blpop(["bench:floor:answer"], 10)
        samples.append((time.perf_counter() - started) * 1e3)
    relay.join(10)
    samples.sort()
    return f"p50 {statistics.median(samples):.2f} ms, p99 {samples[int(n * 0.99) - 1]:.2f} ms"


def _answer(url: str, n: int) -> None:
    client = redis.Redis.from_url(url)
    for _ in range(n + 1):
        _, message = client.blpop(["bench:floor:ask"], 10)  # type: ignore[misc]
        client.lpush("bench:floor:answer", message)


def _incr_rate(client: redis.Redis, threads: int, n: int) -> float:
    def loop() -> None:
        for _ in range(n // threads):
            client.incr("bench:floor")

    workers = [threading.Thread(target=loop) for _ in range(threads)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return (n // threads) * threads / (time.perf_counter() - started)


if __name__ == "__main__":
    for row in rows():
        print(*row, sep=": ")
