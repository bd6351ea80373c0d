"""Task states, as in Celery.

An unknown task id reports PENDING. Any other string is a valid custom state
(set with `Task.update_state`).
"""

from __future__ import annotations

PENDING = "PENDING"
RECEIVED = "RECEIVED"
STARTED = "STARTED"
SUCCESS = "SUCCESS"
FAILURE = "FAILURE"
RETRY = "RETRY"
REVOKED = "REVOKED"
REJECTED = "REJECTED"
#: A run that raised `Ignore`: nothing is recorded for it (the task keeps the state it set itself).
IGNORED = "IGNORED"

#: States after which the task will not change again.
READY_STATES = frozenset({SUCCESS, FAILURE, REVOKED})
#: States that are not ready.
UNREADY_STATES = frozenset({PENDING, RECEIVED, STARTED, REJECTED, RETRY})
#: States whose result is an exception that `get()` re-raises.
EXCEPTION_STATES = frozenset({RETRY, FAILURE, REVOKED})
PROPAGATE_STATES = frozenset({FAILURE, REVOKED})

ALL_STATES = frozenset({PENDING, RECEIVED, STARTED, SUCCESS, FAILURE, RETRY, REVOKED, REJECTED})

__all__ = [
    "IGNORED",
    "ALL_STATES",
    "EXCEPTION_STATES",
    "FAILURE",
    "PENDING",
    "PROPAGATE_STATES",
    "READY_STATES",
    "RECEIVED",
    "REJECTED",
    "RETRY",
    "REVOKED",
    "STARTED",
    "SUCCESS",
    "UNREADY_STATES",
]
