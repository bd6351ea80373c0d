import os

from benchmarks.peers.common import RESULTS, count_done
from conveyor import Celery

url = os.environ["BENCH_REDIS_URL"]
app = Celery("bench", broker=url, result_backend=url, task_ignore_result=not RESULTS)


@app.task(name="bench.noop")
def noop(i: int) -> int:
    count_done()
    return i
