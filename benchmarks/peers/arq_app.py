import os
from typing import ClassVar

from arq.connections import RedisSettings

from benchmarks.peers.common import RESULTS, count_done


async def noop(ctx, i):
    count_done()
    return i


class WorkerSettings:
    functions: ClassVar = [noop]
    redis_settings = RedisSettings.from_dsn(os.environ["BENCH_REDIS_URL"])
    poll_delay = 0.005  # tuned: the default 0.5 s poll caps arq at about 200 tasks/s
    max_jobs = 100
    keep_result = 3600 if RESULTS else 0
