"""Conveyor: a distributed task queue for Python with Celery's API.

from conveyor import Celery

app = Celery("task")

@app.task
def add(x: int, y: int) -> int:
    return x + y

add.delay(1, 2).get()  # 3
"""

__version__ = "0.1.0"

from conveyor import exceptions, states
from conveyor._state import current_task
from conveyor.app import Celery, Conveyor
from conveyor.canvas import Signature, chain, chord, group, signature
from conveyor.current import current_app
from conveyor.exceptions import (
    BrokerConnectionError,
    ConveyorError,
    ImproperlyConfigured,
    MaxRetriesExceededError,
    NotRegistered,
    Retry,
    SoftTimeLimitExceeded,
    TaskRevokedError,
    TimeLimitExceeded,
    WorkerLostError,
)
from conveyor.result import AsyncResult, GroupResult
from conveyor.routing import Exchange, Queue
from conveyor.shared import shared_task
from conveyor.task import Task

__all__ = [
    "AsyncResult",
    "BrokerConnectionError",
    "Celery",
    "Conveyor",
    "ConveyorError",
    "Exchange",
    "GroupResult",
    "ImproperlyConfigured",
    "MaxRetriesExceededError",
    "NotRegistered",
    "Queue",
    "Retry",
    "Signature",
    "SoftTimeLimitExceeded",
    "Task",
    "TaskRevokedError",
    "TimeLimitExceeded",
    "WorkerLostError",
    "__version__",
    "chain",
    "chord",
    "current_app",
    "current_task",
    "exceptions",
    "group",
    "shared_task",
    "signature",
    "states",
]
