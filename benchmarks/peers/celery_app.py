import os

from celery import Celery

from benchmarks.peers.common import RESULTS, count_done

url = os.environ["BENCH_REDIS_URL"]
app = Celery("bench", broker=url, backend=url)
app.conf.worker_hijack_root_logger = False
app.conf.task_ignore_result = not RESULTS


@app.task(name="bench.noop")
def noop(i):
    count_done()
    return i
