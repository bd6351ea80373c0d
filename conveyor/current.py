"""The current app: the one most recently created, which results and signatures made without one use.

Kept apart from `app.py` so that the modules the app is built from (results,
canvas) can find it without importing the app's module.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from conveyor.app import Conveyor

_current: Conveyor | None = None
_make_default: Callable[[], Conveyor] | None = None


def get_current_app() -> Conveyor:
    """The most recently created app (a default one if none exists)."""
    global _current
    if _current is None:
        if _make_default is None:
            raise RuntimeError("no Conveyor app exists yet: import conveyor first")
        _current = _make_default()
    return _current


class CurrentApp:
    """Celery's `current_app`, the one adapter of its kind: `current_app.conf`, `current_app.send_task(...)`
    and every other attribute are the current app's; `current_app()` returns the app itself."""

    def __call__(self) -> Conveyor:
        return get_current_app()

    def __getattr__(self, name: str) -> Any:
        return getattr(get_current_app(), name)

    def __repr__(self) -> str:
        return f"<current app: {get_current_app()!r}>"


current_app = CurrentApp()


def set_current_app(app: Conveyor) -> None:
    """Make `app` the current one (every new app calls this)."""
    global _current
    _current = app


def set_default_app_factory(factory: Callable[[], Conveyor]) -> None:
    """How to make the app `current_app()` returns when none was created."""
    global _make_default
    _make_default = factory
