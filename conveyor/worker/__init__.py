"""The worker: `Worker` consumes queues and runs tasks in a pool."""

from conveyor.worker.worker import Worker

__all__ = ["Worker"]
