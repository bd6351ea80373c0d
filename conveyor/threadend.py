"""Releasing a thread's own resources when the thread ends, in the process that owns them.

Hot paths keep a connection per thread (Redis, Django's database). It must go
back when its thread ends, or a producer with a thread per request keeps one
connection per thread it ever ran; and it must not be touched in a child
forked from another thread, whose copies of the parent's threads (and their
thread-local data) are dropped as it starts: closing there would end the
parent's session on the socket the two share.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from typing import Any

_local = threading.local()


class _ThreadEnd:
    """Kept in one thread's local data only: it is freed when the thread ends."""


def when_thread_ends(callback: Callable[..., Any], *args: Any) -> weakref.finalize[Any, Any]:
    """Call `callback(*args)` when the calling thread ends (or at exit), in this process only.

    Returns the finalizer: call it to run the callback now (once), as a release
    before the thread ends does.
    """
    marker = getattr(_local, "marker", None)
    if marker is None:
        marker = _local.marker = _ThreadEnd()
    return weakref.finalize(marker, _in_owner, os.getpid(), callback, args)


def _in_owner(pid: int, callback: Callable[..., Any], args: tuple[Any, ...]) -> None:
    if os.getpid() == pid:
        callback(*args)
