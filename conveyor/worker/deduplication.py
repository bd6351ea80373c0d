"""Deduplication: a task that ends without running gives back the hold its call took.

(A task that runs gives it back where it runs, `execution.py`, as in eager mode.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from conveyor import dedup
from conveyor.worker.hooks import Held, Hook

if TYPE_CHECKING:
    from conveyor.worker.worker import Worker


class Deduplication(Hook):
    def start(self, worker: Worker) -> None:
        self.app = worker.app

    def refused(self, held: Held, state: str, error: BaseException) -> None:
        dedup.task_ended(self.app, held.job.message.headers)
