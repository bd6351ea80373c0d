"""The app the benchmarks run: a no-op task, on the broker named by CONVEYOR_BENCH_BROKER."""

import os

from conveyor import Celery

_url = os.environ.get("CONVEYOR_BENCH_BROKER", "sqlite:///bench.db")
_options = {"global_keyprefix": os.environ.get("CONVEYOR_BENCH_PREFIX", "bench:"), "queue_expires": 120}
app = Celery("bench", broker=_url, result_backend=os.environ.get("CONVEYOR_BENCH_BACKEND") or _url)
app.conf.broker_transport_options = {"polling_interval": 1.0, **_options}
app.conf.result_backend_transport_options = _options
if os.environ.get("CONVEYOR_BENCH_SIGNING"):
    app.conf.task_signing_key = os.environ["CONVEYOR_BENCH_SIGNING"]
if os.environ.get("CONVEYOR_BENCH_CONTROL"):
    app.conf.worker_enable_remote_control = os.environ["CONVEYOR_BENCH_CONTROL"] == "1"
if os.environ.get("CONVEYOR_BENCH_ADAPTIVE"):
    app.conf.worker_prefetch_adaptive = os.environ["CONVEYOR_BENCH_ADAPTIVE"] == "1"
if os.environ.get("CONVEYOR_BENCH_EVENTS"):
    app.conf.worker_send_task_events = os.environ["CONVEYOR_BENCH_EVENTS"] == "1"


@app.task(name="bench.noop")
def noop(i: int) -> int:
    return i


@app.task(name="bench.anoop")
async def anoop(i: int) -> int:
    """The no-op as `async def`: what `--pool asyncio` measures."""
    return i
