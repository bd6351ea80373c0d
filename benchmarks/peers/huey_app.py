import os

from huey import RedisHuey, SqliteHuey

from benchmarks.peers.common import RESULTS, count_done

if os.environ.get("BENCH_SQLITE"):  # Huey's embedded store, against Conveyor's SQLite default
    huey = SqliteHuey("bench", filename=os.environ["BENCH_SQLITE"], results=RESULTS)
else:
    huey = RedisHuey("bench", url=os.environ["BENCH_REDIS_URL"], results=RESULTS, notify_result=True)


@huey.task()
def noop(i):
    count_done()
    return i
