import os

from huey import RedisHuey

from benchmarks.peers.common import RESULTS, count_done

huey = RedisHuey("bench", url=os.environ["BENCH_REDIS_URL"], results=RESULTS, notify_result=True)


@huey.task()
def noop(i):
    count_done()
    return i
