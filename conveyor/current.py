"""The current app: the one most recently created, which results and signatures made without one use.

Kept apart from `app.py` so that the modules the app is built from (results,
canvas) can find it without importing the app's module.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conveyor.app import Conveyor

_current: Conveyor | None = None
_make_default: Callable[[], Conveyor] | None = None


def current_app() -> Conveyor:
    """The most recently created app (a default one if none exists)."""
    global _current
    if _current is None:
        if _make_default is None:
            raise RuntimeError("no Conveyor app exists yet: import conveyor first")
        _current = _make_default()
    return _current


def set_current_app(app: Conveyor) -> None:
    """Make `app` the current one (every new app calls this)."""
    global _current
    _current = app


def set_default_app_factory(factory: Callable[[], Conveyor]) -> None:
    """How to make the app `current_app()` returns when none was created."""
    global _make_default
    _make_default = factory
