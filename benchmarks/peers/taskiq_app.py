import os

from taskiq_redis import ListQueueBroker, RedisAsyncResultBackend

from benchmarks.peers.common import RESULTS, count_done

url = os.environ["BENCH_REDIS_URL"]
broker = ListQueueBroker(url)
if RESULTS:
    broker = broker.with_result_backend(RedisAsyncResultBackend(url))


@broker.task(task_name="bench.noop")
async def noop(i: int) -> int:
    count_done()
    return i
