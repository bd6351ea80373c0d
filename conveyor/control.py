"""Remote control: `app.control.revoke(...)`, `app.control.rate_limit(...)`.

Revocations are kept by the broker (not in worker memory), so a worker
started later honours them too, for `worker_revoke_expires` seconds. A revoked
task that has not started never runs and ends REVOKED; with `terminate=True`
a running one is stopped (prefork: the signal goes to its process; threads:
TaskRevokedError is raised in its thread at the next Python bytecode) and
ends REVOKED.

Rate limits set at run time are kept by the broker too (namespace
`rate_limits`), override the task's configured `rate_limit` on every worker
within a second, and last until cleared (`rate_limit(name, None)`).
"""

from __future__ import annotations

import json
import signal as signals
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from conveyor import states
from conveyor.config import parse_rate
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


#: Broker key-value namespace of the rate limits set at run time (task name -> rate).
RATE_LIMITS = "rate_limits"


class Control:
    def __init__(self, app: Conveyor) -> None:
        self.app = app

    def rate_limit(self, task_name: str, rate_limit: str | float | None) -> None:
        """Set a task's rate limit on every worker: "10/s", "100/m", "5/h", a number per second,
        or 0 for no limit; None clears it (the task's configured `rate_limit` applies again)."""
        value = None
        if rate_limit is not None:
            try:
                parse_rate(rate_limit)
            except ValueError as exc:
                raise ImproperlyConfigured(f"rate limit for {task_name}: {exc}") from None
            value = str(rate_limit).encode()
        self.app.broker.kv_put(RATE_LIMITS, task_name, value)

    def rate_limits(self) -> dict[str, str]:
        """The rate limits set at run time, by task name."""
        return {name: raw.decode() for name, raw in self.app.broker.kv_items(RATE_LIMITS).items()}

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
