"""How features plug into the worker.

The worker's loop fetches, runs, records and acknowledges; everything else it
does (revocations, rate limits, chords, deduplication, monitoring events, the
task log, heartbeats, lease renewal, result clean-up, remote control, beat) is
a `Hook`, listed in `worker/features.py`. A hook overrides the methods it
needs; the worker calls only those.

| method | called | on which thread |
|---|---|---|
| `start(worker)` | once, before the first delivery | the worker's |
| `admit(arrivals)` | each batch of arrivals, hook after hook; returns those that go on | the one handling the batch |
| `received(held)` | a task accepted for the pool | the one handling the batch |
| `started(held, pid)` | its run began | the one handling the report |
| `finished(held, outcome)` | its run ended (or its process was lost) | the one handling the report |
| `refused(held, state, error)` | it ended without running (revoked, expired, unknown, refused) | the one handling it |
| `flush()` | a batch's writes are about to be handed to the writer | the one handling the batch |
| `stored(updates)` | a batch of results is in the backend | the writer's |
| `tick(now)` | every `TICK_SECONDS` | the housekeeping thread |
| `stop()` | once, when the worker has stopped | the worker's |

"The one handling" is the worker's loop, or on an idle worker the fetcher's
or a pool's thread: the worker's inbox lock is held either way, so these
calls never overlap one another. A hook that ends or defers an arrival in
`admit` does so with `Worker.refuse` or `Worker.defer` and leaves it out of
what it returns.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from conveyor.backends.base import StateUpdate
from conveyor.brokers.base import Delivery
from conveyor.execution import Job, Outcome

if TYPE_CHECKING:
    from conveyor.worker.worker import Worker

logger = logging.getLogger("conveyor.worker")

H = TypeVar("H", bound="Hook")

#: How often `Hook.tick` runs.
TICK_SECONDS = 0.5


@dataclass(slots=True)
class Held:
    """A delivery the worker has taken on, and the job made of it."""

    job: Job
    delivery: Delivery
    received_at: float = 0.0
    """When the worker took it (time.time(), one reading per batch)."""
    acked: bool = False
    started: bool = False
    terminated: bool = False
    pid: int | None = None
    """The process running it, once started."""
    started_at: float | None = None
    """When it started (time.time()), once started."""


class Hook:
    """A feature of the worker: override the methods it needs (see the module's table)."""

    def start(self, worker: Worker) -> None:
        """The worker is about to take deliveries."""

    def admit(self, arrivals: list[Held]) -> list[Held]:
        """Decide on a batch of arrivals: return those that go on."""
        return arrivals

    def received(self, held: Held) -> None:
        """A task was accepted and goes to the pool."""

    def started(self, held: Held, pid: int) -> None:
        """A task began running in process `pid`."""

    def finished(self, held: Held, outcome: Outcome) -> None:
        """A task's run ended with `outcome` (final, retried, or its process lost)."""

    def refused(self, held: Held, state: str, error: BaseException) -> None:
        """A task ended in `state` without running."""

    def flush(self) -> None:
        """The batch's writes are about to go: add what has come due."""

    def stored(self, updates: Sequence[StateUpdate]) -> None:
        """A batch of results was written to the backend."""

    def tick(self, now: float) -> None:
        """Periodic work (`now`: time.monotonic())."""

    def stop(self) -> None:
        """The worker has stopped."""


class Hooks:
    """The registered hooks, and for each method only those that override it (the rest cost nothing)."""

    def __init__(self, hooks: Sequence[Hook]) -> None:
        self.all = list(hooks)

        def overriding(name: str) -> list[Hook]:
            return [h for h in self.all if getattr(type(h), name) is not getattr(Hook, name)]

        self.admitting = overriding("admit")
        self.receiving = overriding("received")
        self.starting = overriding("started")
        self.finishing = overriding("finished")
        self.refusing = overriding("refused")
        self.flushing = overriding("flush")
        self.storing = overriding("stored")
        self.ticking = overriding("tick")

    def find(self, kind: type[H]) -> H | None:
        """The hook of this kind, if there is one."""
        return next((h for h in self.all if isinstance(h, kind)), None)

    def admit(self, arrivals: list[Held]) -> list[Held]:
        for hook in self.admitting:
            if not arrivals:
                break
            arrivals = hook.admit(arrivals)
        return arrivals

    def received(self, held: Held) -> None:
        for hook in self.receiving:
            hook.received(held)

    def started(self, held: Held, pid: int) -> None:
        for hook in self.starting:
            hook.started(held, pid)

    def finished(self, held: Held, outcome: Outcome) -> None:
        for hook in self.finishing:
            hook.finished(held, outcome)

    def refused(self, held: Held, state: str, error: BaseException) -> None:
        for hook in self.refusing:
            hook.refused(held, state, error)

    def flush(self) -> None:
        for hook in self.flushing:
            hook.flush()

    def stored(self, updates: Sequence[StateUpdate]) -> None:
        for hook in self.storing:
            hook.stored(updates)

    def tick(self, now: float) -> None:
        for hook in self.ticking:
            try:
                hook.tick(now)
            except Exception:  # a bug in one feature stops neither the others nor the worker
                logger.exception("Periodic work of %s failed", type(hook).__name__)
