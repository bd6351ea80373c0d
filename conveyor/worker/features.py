"""The worker's features, in the order their hooks run (`worker/hooks.py`).

To see what a worker does beyond fetching, running and acknowledging, read
this list.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from conveyor.worker.autoscale import Autoscaler
from conveyor.worker.chords import Chords
from conveyor.worker.cleanup import ResultCleanup
from conveyor.worker.control import RemoteControl
from conveyor.worker.deduplication import Deduplication
from conveyor.worker.embedded_beat import EmbeddedBeat
from conveyor.worker.events import TaskEvents
from conveyor.worker.heartbeat import Heartbeat
from conveyor.worker.hooks import Hook
from conveyor.worker.leases import Leases
from conveyor.worker.lost_workers import LostWorkers
from conveyor.worker.prefetch import AdaptivePrefetch
from conveyor.worker.rate_limits import RateLimits
from conveyor.worker.revocations import Revocations
from conveyor.worker.screening import Screening
from conveyor.worker.tasklog import TaskLog

if TYPE_CHECKING:
    from conveyor.app import Conveyor


def features(app: Conveyor, *, beat: bool = False, autoscale: tuple[int, int] | None = None) -> list[Hook]:
    """The hooks of a worker of `app` (`beat`: with the scheduler embedded, `-B`; `autoscale`:
    (max, min) concurrency, `--autoscale`)."""
    hooks: list[Hook] = [
        TaskLog(),  # first: every arrival is logged, whatever happens to it next
        Chords(),  # a malformed chord header is refused before anything acts on the task
        Revocations(),  # a revoked task ends before any other check
        Screening(),  # too many deliveries, unknown task, expired, early
        Deduplication(),
        Leases(),
        Heartbeat(),
        LostWorkers(),
        ResultCleanup(),
    ]
    if app.conf.worker_enable_remote_control:
        hooks.append(RemoteControl())
    if not app.conf.worker_disable_rate_limits:
        hooks.insert(4, RateLimits())  # last to admit: a token is taken only for a task that will run
    if app.conf.worker_send_task_events:
        hooks.append(TaskEvents())
    if app.conf.worker_prefetch_adaptive:
        hooks.append(AdaptivePrefetch())
    if autoscale is not None:
        hooks.append(Autoscaler(*autoscale))
    if beat:
        hooks.append(EmbeddedBeat())
    return hooks
