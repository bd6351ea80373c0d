import os

from benchmarks.peers.common import RESULTS, count_done
from conveyor import Celery

# The broker under test (BENCH_BROKER_URL: the embedded SQLite); the counter is always on Redis.
url = os.environ.get("BENCH_BROKER_URL") or os.environ["BENCH_REDIS_URL"]
app = Celery("bench", broker=url, result_backend=url, task_ignore_result=not RESULTS)


@app.task(name="bench.noop")
def noop(i: int) -> int:
    count_done()
    return i
