"""Deduplication: one task per key while it is pending, or for a time window.

    report.apply_async((42,), deduplication_id="report:42")
    report.apply_async((42,), deduplication_id="report:42", deduplication_ttl=60)

A call whose `deduplication_id` is held sends nothing and returns the result
of the task that holds it. Without a ttl the key is held until that task ends
(SUCCESS, FAILURE, REVOKED; a retry keeps it), released by the worker that
ends it; with `deduplication_ttl` it is held for that many seconds from the
first call, however soon the task ends (a throttle). Either way a hold lapses
after `result_expires` at the latest, so a task lost to a purge does not block
its key for ever.

The hold is a compare-and-set in the broker's key-value store (namespace
`dedup`), so it holds across every producer. The message carries the hold
(header `deduplication`), so the worker releases exactly the hold its task
took and never a later one.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from conveyor.exceptions import BrokerError

if TYPE_CHECKING:
    from conveyor.app import Conveyor

logger = logging.getLogger("conveyor.dedup")

NAMESPACE = "dedup"
HEADER = "deduplication"
#: A hold lapses after this long when `result_expires` is unset.
LONGEST_HOLD_SECONDS = 86_400.0


def claim(app: Conveyor, key: str, task_id: str, ttl: float | None) -> tuple[str | None, dict[str, Any]]:
    """Hold `key` for `task_id`: (None, the header to send) when it is ours, or (the holder's task id, {})."""
    until = time.time() + float(ttl if ttl is not None else app.conf.result_expires or LONGEST_HOLD_SECONDS)
    hold = json.dumps({"task_id": task_id, "until": round(until, 3), "release": ttl is None}).encode()
    state = app.state
    while True:
        current = state.kv_get(NAMESPACE, key)
        if current is not None:
            holder = json.loads(current)
            if holder["until"] > time.time():
                return holder["task_id"], {}
        if state.kv_swap(NAMESPACE, key, current, hold):
            return None, {"id": key, "hold": hold.decode()}
        # Another producer took or released it meanwhile: look again.


def release(app: Conveyor, header: Any) -> None:
    """Give back a hold (a no-op if it lapsed and was taken again since)."""
    try:
        app.state.kv_swap(NAMESPACE, header["id"], header["hold"].encode(), None)
    except (KeyError, TypeError, AttributeError) as exc:
        logger.warning("Ignoring a malformed %r header: %r (%s)", HEADER, header, exc)
    except BrokerError as exc:
        logger.warning("Could not release deduplication key %r (it lapses on its own): %s", header.get("id"), exc)


def task_ended(app: Conveyor, headers: Mapping[str, Any]) -> None:
    """A task ended for good: give back the hold it carries, unless a ttl hold (that one lapses)."""
    header = headers.get(HEADER)
    if header is None:
        return
    try:
        releasable = json.loads(header["hold"])["release"]
    except (KeyError, TypeError, ValueError) as exc:
        logger.warning("Ignoring a malformed %r header: %r (%s)", HEADER, header, exc)
        return
    if releasable:
        release(app, header)
