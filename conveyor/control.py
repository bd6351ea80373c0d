"""Remote control: `app.control.revoke(...)`.

Revocations are kept by the broker (not in worker memory), so a worker
started later honours them too, for `worker_revoke_expires` seconds. A revoked
task that has not started never runs and ends REVOKED; with `terminate=True`
a running one is stopped (prefork: the signal goes to its process; threads:
TaskRevokedError is raised in its thread at the next Python bytecode) and
ends REVOKED.
"""

from __future__ import annotations

import json
import signal as signals
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from conveyor import states
from conveyor.exceptions import ImproperlyConfigured, TaskRevokedError

if TYPE_CHECKING:
    from conveyor.app import Conveyor


def signal_number(signal: str | int | None) -> int:
    """'SIGTERM', 'TERM', 'SIGKILL', 9, ... to a signal number (default SIGTERM)."""
    if signal is None:
        return int(signals.SIGTERM)
    if isinstance(signal, int):
        return signal
    name = signal.upper()
    name = name if name.startswith("SIG") else f"SIG{name}"
    try:
        return int(getattr(signals, name))
    except AttributeError:
        raise ImproperlyConfigured(f"unknown signal {signal!r}") from None


class Control:
    def __init__(self, app: Conveyor) -> None:
        self.app = app

    def revoke(self, task_id: str | Sequence[str], terminate: bool = False, signal: str | int | None = None) -> None:
        """Revoke one task or many: they will not run; with terminate=True running ones are stopped."""
        ids = [task_id] if isinstance(task_id, str) else list(task_id)
        info = json.dumps({"terminate": terminate, "signal": signal_number(signal), "at": time.time()}).encode()
        self.app.broker.revoke(ids, info, time.time() + self.app.conf.worker_revoke_expires)
        # Callers waiting in get() learn at once; a task that already finished keeps its state.
        backend = self.app.backend
        stored = backend.read(ids)  # one round trip for all of them
        pending = [t for t in ids if t not in stored or backend.decode(stored[t])["status"] not in states.READY_STATES]
        if pending and not terminate:
            error = TaskRevokedError("revoked")
            backend.write([backend.make_update(t, states.REVOKED, error, history={"revoked": True}) for t in pending])
