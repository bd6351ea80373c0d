"""The tutorial's tasks, as written; only the import changed (celery -> conveyor)."""

import time

from config import BaseCeleryConfig

from conveyor import Celery

app = Celery("task")

app.config_from_object(BaseCeleryConfig)


@app.task
def add(x, y):
    time.sleep(5)
    return x + y


@app.task
def priority_high(messgae):
    time.sleep(5)
    print(messgae)
    return "priority_high"


@app.task
def priority_low(messgae):
    time.sleep(5)
    print(messgae)
    return "priority_low"
