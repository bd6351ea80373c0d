"""The SQLite store's wake-up sockets."""

from __future__ import annotations

import gc
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from conveyor import wakeup


def test_a_listener_is_woken_by_a_notifier_of_its_directory(tmp_path: Path) -> None:
    with wakeup.Listener(str(tmp_path)) as listener:
        notifier = wakeup.Notifier(str(tmp_path))
        assert not listener.wait(0.01)
        notifier.notify()
        assert listener.wait(1.0)
        notifier.close()


def test_sockets_never_closed_are_released_quietly_when_collected(tmp_path: Path) -> None:
    """An app that is never closed leaves no socket, no file and no ResourceWarning behind."""
    unraisable: list[Any] = []
    hook, sys.unraisablehook = sys.unraisablehook, unraisable.append
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", ResourceWarning)
            listener, notifier = wakeup.Listener(str(tmp_path)), wakeup.Notifier(str(tmp_path))
            notifier.notify()
            path = listener.path
            del listener, notifier
            gc.collect()
    finally:
        sys.unraisablehook = hook
    assert unraisable == []
    assert path is not None and not os.path.exists(path)
