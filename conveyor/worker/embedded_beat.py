"""`conveyor worker -B`: the scheduler runs on a thread of the worker."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from conveyor import signals
from conveyor.beat import Beat
from conveyor.worker.hooks import Hook

if TYPE_CHECKING:
    from conveyor.worker.worker import Worker


class EmbeddedBeat(Hook):
    def __init__(self) -> None:
        self._done = threading.Event()

    def start(self, worker: Worker) -> None:
        beat = Beat(worker.app)
        signals.beat_embedded_init.send(beat)
        threading.Thread(target=beat.run, args=(self._done,), name="conveyor-beat", daemon=True).start()

    def stop(self) -> None:
        self._done.set()
