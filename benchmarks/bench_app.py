"""The app the benchmarks run: a no-op task, on the broker named by CONVEYOR_BENCH_BROKER."""

import os

from conveyor import Celery

app = Celery("bench", broker=os.environ.get("CONVEYOR_BENCH_BROKER", "sqlite:///bench.db"))
app.conf.broker_transport_options = {"polling_interval": 1.0}


@app.task(name="bench.noop")
def noop(i: int) -> int:
    return i
