"""The tutorial's configuration, as written, with two changes.

`from kombu import Queue, Exchange` became `from conveyor import Queue, Exchange`,
and the Redis URLs are left out so that the embedded SQLite default is used
(`sqlite:///conveyor.db` in the current directory). To use Redis as in the
tutorial, set broker_url and result_backend again.
"""

from datetime import timedelta  # noqa: F401 - as in the tutorial

from conveyor import Exchange, Queue


class BaseCeleryConfig:
    # 消息代理（Broker）和结果后端: the embedded SQLite default
    # broker_url = 'redis://:123456@192.168.137.137:6379/0'
    # result_backend = 'redis://:123456@192.168.137.137:6379/1'

    # 任务序列化和反序列化使用的格式
    task_serializer = "json"
    result_serializer = "json"

    # 可接受的内容类型
    accept_content = ["json"]

    # 设置时区
    timezone = "Asia/Shanghai"

    # 是否启用 UTC 时间
    enable_utc = True

    # 并发 worker 数量
    worker_concurrency = 4

    # 每个 worker 最多执行的任务数
    worker_max_tasks_per_child = 100

    # 任务失败后是否重新排队
    task_acks_late = False

    # 在每个 worker 启动时预取的任务数量
    worker_prefetch_multiplier = 4

    # 设置任务超时时间（秒）
    task_time_limit = 30 * 60  # 30 minutes

    # 设置结果过期时间（秒），默认一天
    result_expires = 24 * 60 * 60  # 1 day

    # 任务限流
    task_annotations = {"tasks.add": {"rate_limit": "10/s"}}

    # 定义多个队列
    task_queues = (
        Queue("priority_low", Exchange("priority_low"), routing_key="priority_low"),
        Queue("priority_high", Exchange("priority_high"), routing_key="priority_high"),
        Queue("default", Exchange("default"), routing_key="default"),
    )

    # 定义路由规则，将不同的任务分配到不同的队列中
    task_routes = {
        "task.priority_high": {"queue": "priority_high", "routing_key": "priority_high"},
        "task.priority_low": {"queue": "priority_low", "routing_key": "priority_low"},
        "task.add": {"queue": "default", "routing_key": "default"},
    }

    # 定时任务调度器的配置
    beat_schedule = {
        "add-every-30-seconds": {
            "task": "task.add",
            "schedule": 30.0,
            "args": (16, 16),
        },
    }
