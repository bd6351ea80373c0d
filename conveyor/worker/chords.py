"""Chords: a header part that ends counts towards its chord once its result is stored (a part
whose chord header is malformed goes to the dead letters)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from conveyor import states
from conveyor.backends.base import StateUpdate
from conveyor.canvas import chord_part, chord_part_done
from conveyor.exceptions import DecodeError
from conveyor.worker.hooks import Held, Hook

if TYPE_CHECKING:
    from conveyor.worker.worker import Worker

logger = logging.getLogger("conveyor.worker")


class Chords(Hook):
    def __init__(self) -> None:
        self._parts: dict[str, tuple[str, int]] = {}  # task id -> its chord (group id, size) until counted

    def start(self, worker: Worker) -> None:
        self.worker, self.app = worker, worker.app

    def admit(self, arrivals: list[Held]) -> list[Held]:
        return [held for held in arrivals if self._readable(held)]

    def _readable(self, held: Held) -> bool:
        try:
            chord_part(held.job.message.headers)
        except DecodeError as exc:
            message = held.job.message
            logger.error("Task %s[%s] is undecodable: %s", message.display_name, message.id, exc)
            error = DecodeError(f"undecodable message: {exc}")
            self.worker.ledger.refuse(
                held, states.FAILURE, error, dead_letter=f"task {message.task}[{message.id}]: {exc}"
            )
            return False
        return True

    def received(self, held: Held) -> None:
        self._remember(held)

    def refused(self, held: Held, state: str, error: BaseException) -> None:
        self._remember(held)  # a revoked or failed part still ends its chord

    def _remember(self, held: Held) -> None:
        try:
            chord = chord_part(held.job.message.headers)
        except DecodeError:
            return  # refused as malformed (see admit): no chord to count it in
        if chord is not None:
            self._parts[held.job.message.id] = chord

    def stored(self, updates: Sequence[StateUpdate]) -> None:
        for update in updates:
            if update.state in states.READY_STATES:
                chord = self._parts.pop(update.task_id, None)
                if chord is not None:
                    chord_part_done(self.app, *chord)
