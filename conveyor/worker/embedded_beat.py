"""`conveyor worker -B`: the scheduler runs on a thread of the worker."""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

from conveyor import schedulers, signals
from conveyor.beat import Beat
from conveyor.worker.hooks import Hook

if TYPE_CHECKING:
    from conveyor.worker.worker import Worker


class EmbeddedBeat(Hook):
    def __init__(self) -> None:
        self._done = threading.Event()

    def start(self, worker: Worker) -> None:
        custom = schedulers.configured(worker.app)  # a scheduler of the project's own (beat_scheduler)
        beat: Beat | schedulers.Scheduler
        target: Callable[[threading.Event], None]
        if custom is not None:
            beat, target = custom, partial(schedulers.run, custom)
        else:
            beat = Beat(worker.app)
            target = beat.run
        signals.beat_init.send(beat)  # as Celery: a beat's start, then that it runs in a worker
        signals.beat_embedded_init.send(beat)
        threading.Thread(target=target, args=(self._done,), name="conveyor-beat", daemon=True).start()

    def stop(self) -> None:
        self._done.set()
