"""Celery's `celery.utils.time` helpers that task code uses: time zones and durations."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo

from conveyor.current import get_current_app


def maybe_timedelta(delta: int | float | timedelta) -> timedelta:
    """Seconds as a timedelta; a timedelta as it is."""
    return timedelta(seconds=delta) if isinstance(delta, (int, float)) else delta


def is_naive(dt: datetime) -> bool:
    """Whether the datetime has no time zone."""
    return dt.tzinfo is None or dt.tzinfo.utcoffset(dt) is None


def get_timezone(name: str | tzinfo | None = None) -> tzinfo:
    """A time zone by name; the current app's `timezone` setting (UTC when unset) without one."""
    if isinstance(name, tzinfo):
        return name
    name = name or get_current_app().conf.timezone
    return ZoneInfo(name) if name and name.upper() != "UTC" else UTC


def make_aware(dt: datetime, tz: tzinfo | None = None) -> datetime:
    """A naive datetime read as local time in `tz` (default: the app's time zone)."""
    return dt.replace(tzinfo=tz or get_timezone())


def localize(dt: datetime, tz: tzinfo | None = None) -> datetime:
    """The same instant in `tz` (default: the app's time zone); a naive one is taken as UTC."""
    if is_naive(dt):
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(tz or get_timezone())


def to_utc(dt: datetime) -> datetime:
    """The same instant in UTC; a naive one is taken as UTC."""
    return localize(dt, UTC)


def maybe_make_aware(dt: datetime, tz: tzinfo | None = None) -> datetime:
    """An aware datetime: a naive one is taken as UTC (Celery's convention), then converted to `tz`."""
    if is_naive(dt):
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(tz) if tz is not None else dt


def humanize_seconds(secs: float, prefix: str = "", sep: str = "", now: str = "now", microseconds: bool = False) -> str:
    """`1.00 hour`, `4.00 minutes`, `now`, as Celery writes durations in its logs."""
    for unit, size in (("day", 86400.0), ("hour", 3600.0), ("minute", 60.0)):
        if secs >= size:
            amount = secs / size
            return f"{prefix}{sep}{amount:.2f} {unit}{'' if amount == 1 else 's'}"
    if secs > 0:
        return f"{prefix}{sep}{secs:.2f} second{'' if secs == 1 else 's'}"
    return now


__all__ = [
    "get_timezone", "humanize_seconds", "is_naive", "localize", "make_aware", "maybe_make_aware",
    "maybe_timedelta", "to_utc",
]  # fmt: skip
