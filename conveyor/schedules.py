"""Schedules for periodic tasks: `schedule` (an interval), `crontab`, `solar`.

Each answers one question: given when an entry last ran, when is it next due?
(`next_run(last_run_at, tz) -> datetime in UTC`). Crontab fields are
wall-clock times in the app's `timezone`; across daylight-saving changes every
wall-clock run happens exactly once: a time that does not exist that day (a
02:30 job on a spring-forward night) runs at the first valid time after it,
and a time that occurs twice (01:30 on a fall-back night) runs at its first
occurrence only. Sun times come from `astral`, with Celery's horizons.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any

UTC = UTC


class BaseSchedule(ABC):
    def latest_tick(self, last_run_at: datetime, now: datetime) -> datetime:
        """When a run found due at `now` counts as having happened (interval schedules keep their phase)."""
        return now

    @abstractmethod
    def next_run(self, last_run_at: datetime, tz: tzinfo) -> datetime:
        """The first due time after `last_run_at` (both aware; the result in UTC)."""

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """A JSON form, to store entries made at runtime (see `schedule_from_dict`)."""

    def remaining_estimate(self, last_run_at: datetime, now: datetime | None = None, tz: tzinfo = UTC) -> timedelta:
        """Celery's form: the time left until the next run after `last_run_at` (negative when overdue)."""
        return self.next_run(last_run_at, tz) - (now or datetime.now(UTC))

    def is_due(self, last_run_at: datetime, now: datetime | None = None, tz: tzinfo = UTC) -> tuple[bool, float]:
        """Celery's form: (due now?, seconds until the next check)."""
        now = now or datetime.now(UTC)
        due_at = self.next_run(last_run_at, tz)
        if due_at <= now:
            return True, max(0.0, (self.next_run(now, tz) - now).total_seconds())
        return False, (due_at - now).total_seconds()


class schedule(BaseSchedule):  # noqa: N801 - Celery's name
    """Every `run_every` (seconds or a timedelta)."""

    def __init__(self, run_every: float | timedelta, relative: bool = False) -> None:
        seconds = run_every.total_seconds() if isinstance(run_every, timedelta) else float(run_every)
        if seconds <= 0:
            raise ValueError(f"a schedule interval must be positive, not {run_every!r}")
        self.run_every = timedelta(seconds=seconds)
        self.relative = relative

    def next_run(self, last_run_at: datetime, tz: tzinfo) -> datetime:
        return (last_run_at + self.run_every).astimezone(UTC)

    def latest_tick(self, last_run_at: datetime, now: datetime) -> datetime:
        """When the run sent at `now` counts from. On time (within a tenth of the interval, at
        most a second, of its tick) it counts from its tick, so the phase does not drift. Late
        (beat was down, or busy): missed ticks collapse into this one run, which counts from
        `now`, so the next keeps its full spacing instead of following a moment later."""
        tick = last_run_at + ((now - last_run_at) // self.run_every) * self.run_every
        on_time = min(self.run_every / 10, timedelta(seconds=1))
        return tick if now - tick <= on_time else now

    def to_dict(self) -> dict[str, Any]:
        return {"type": "schedule", "seconds": self.run_every.total_seconds(), "relative": self.relative}

    def __repr__(self) -> str:
        return f"<every {self.run_every.total_seconds():g} seconds>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, schedule) and other.run_every == self.run_every


DAY_NAMES = {"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}
MONTH_NAMES = {
    "jan": 1, "feb": 2, "mar": 3, "apr": 4, "may": 5, "jun": 6,
    "jul": 7, "aug": 8, "sep": 9, "oct": 10, "nov": 11, "dec": 12,
}  # fmt: skip
_PART = re.compile(r"^(\*|[\w]+)(?:-([\w]+))?(?:/(\d+))?$")


#: The most days each month has (February in a leap year).
_DAYS_IN_MONTH = {1: 31, 2: 29, 3: 31, 4: 30, 5: 31, 6: 30, 7: 31, 8: 31, 9: 30, 10: 31, 11: 30, 12: 31}


def parse_field(text: Any, field: str, low: int, high: int, names: dict[str, int] | None = None) -> set[int]:
    """Celery's crontab syntax for one field: `*`, `*/15`, `1-5`, `1-10/2`, `mon-fri`, `1,15,30`, or an int."""
    if isinstance(text, int):
        text = str(text)
    if isinstance(text, (set, list, tuple, frozenset)):
        return set().union(*(parse_field(item, field, low, high, names) for item in text))
    values: set[int] = set()
    for part in str(text).replace(" ", "").lower().split(","):
        match = _PART.match(part)
        if not match:
            raise ValueError(f"crontab {field}: cannot parse {part!r}")
        start_text, end_text, step_text = match.groups()

        def number(token: str) -> int:
            if names and token in names:
                return names[token]
            if names and token[:3] in names and len(token) > 3:
                return names[token[:3]]
            if not token.isdigit():
                raise ValueError(f"crontab {field}: invalid {field} literal {token!r}")
            value = int(token)
            # Celery accepts 7 for Sunday in day_of_week.
            if field == "day_of_week" and value == 7:
                value = 0
            if not low <= value <= high:
                raise ValueError(f"crontab {field}: {value} is outside {low}-{high}")
            return value

        if start_text == "*":
            start, end = low, high
        else:
            start = number(start_text)
            end = number(end_text) if end_text else (high if step_text else start)
        step = int(step_text) if step_text else 1
        if step == 0:
            raise ValueError(f"crontab {field}: a step of 0 in {part!r}")
        if end < start:  # a range that wraps, e.g. fri-mon
            values.update(range(start, high + 1, step))
            values.update(range(low, end + 1, step))
        else:
            values.update(range(start, end + 1, step))
    return values


class crontab(BaseSchedule):  # noqa: N801 - Celery's name
    """Cron-like: `crontab(minute=0, hour='*/3', day_of_week='mon-fri')`, as in Celery.

    A day must match both `day_of_month` and `day_of_week` (Celery's rule, not
    Vixie cron's "either"). `day_of_week` 0 (or 7) is Sunday.
    """

    def __init__(
        self,
        minute: Any = "*",
        hour: Any = "*",
        day_of_week: Any = "*",
        day_of_month: Any = "*",
        month_of_year: Any = "*",
    ) -> None:
        self._orig = {"minute": minute, "hour": hour, "day_of_week": day_of_week,
                      "day_of_month": day_of_month, "month_of_year": month_of_year}  # fmt: skip
        self.minute = parse_field(minute, "minute", 0, 59)
        self.hour = parse_field(hour, "hour", 0, 23)
        # 7 is Sunday too, so `*` (0-7) is the seven days 0-6, as in Celery.
        self.day_of_week = {day % 7 for day in parse_field(day_of_week, "day_of_week", 0, 7, DAY_NAMES)}
        self.day_of_month = parse_field(day_of_month, "day_of_month", 1, 31)
        self.month_of_year = parse_field(month_of_year, "month_of_year", 1, 12, MONTH_NAMES)
        # Days of the month that no chosen month has (the 31st of April) make a schedule that
        # never fires: an error now, as Celery makes it, not a beat that waits for ever.
        longest = max(_DAYS_IN_MONTH[month] for month in self.month_of_year)
        if min(self.day_of_month) > longest:
            raise ValueError(
                f"Invalid crontab: day_of_month {day_of_month!r} never occurs in month_of_year {month_of_year!r}."
            )

    def _day_matches(self, day: date) -> bool:
        weekday = (day.weekday() + 1) % 7  # Monday is 1, Sunday 0
        return day.month in self.month_of_year and day.day in self.day_of_month and weekday in self.day_of_week

    def next_wall_time(self, after: datetime) -> datetime:
        """The first matching naive wall-clock minute strictly after `after` (naive)."""
        start = after.replace(second=0, microsecond=0) + timedelta(minutes=1)
        day = start.date()
        for _ in range(366 * 5):
            if self._day_matches(day):
                earliest = start.time() if day == start.date() else time(0, 0)
                for hour in sorted(h for h in self.hour if h >= earliest.hour):
                    for minute in sorted(self.minute):
                        candidate = time(hour, minute)
                        if candidate >= earliest:
                            return datetime.combine(day, candidate)
            day += timedelta(days=1)
        raise ValueError(f"{self!r} never matches")

    def next_run(self, last_run_at: datetime, tz: tzinfo) -> datetime:
        wall = self.next_wall_time(last_run_at.astimezone(tz).replace(tzinfo=None))
        return wall_to_utc(wall, tz)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "crontab", **{k: v if isinstance(v, (str, int)) else sorted(v) for k, v in self._orig.items()}}

    def __repr__(self) -> str:
        o = self._orig
        return f"<crontab: {o['minute']} {o['hour']} {o['day_of_week']} {o['day_of_month']} {o['month_of_year']}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, crontab) and other.to_dict() == self.to_dict()


def wall_to_utc(wall: datetime, tz: tzinfo) -> datetime:
    """A naive wall-clock time in `tz` as a UTC instant.

    A time that occurs twice (fall back) means its first occurrence; a time
    that does not exist (spring forward) means the first valid time after it.
    """
    aware = wall.replace(tzinfo=tz, fold=0)
    if aware.astimezone(UTC).astimezone(tz).replace(tzinfo=None) == wall:
        return aware.astimezone(UTC)
    probe = wall
    for _ in range(24 * 60):
        probe += timedelta(minutes=1)
        candidate = probe.replace(tzinfo=tz, fold=0)
        if candidate.astimezone(UTC).astimezone(tz).replace(tzinfo=None) == probe:
            return candidate.astimezone(UTC)
    raise ValueError(f"{wall} has no valid time within a day in {tz}")


# Celery's solar events: (astral function, depression or None).
SOLAR_EVENTS = {
    "dawn_astronomical": ("dawn", 18.0), "dawn_nautical": ("dawn", 12.0), "dawn_civil": ("dawn", 6.0),
    "sunrise": ("sunrise", None), "solar_noon": ("noon", None), "sunset": ("sunset", None),
    "dusk_civil": ("dusk", 6.0), "dusk_nautical": ("dusk", 12.0), "dusk_astronomical": ("dusk", 18.0),
}  # fmt: skip


class solar(BaseSchedule):  # noqa: N801 - Celery's name
    """At a sun event at a place: `solar('sunset', -37.81, 144.96)`."""

    def __init__(self, event: str, lat: float, lon: float) -> None:
        if event not in SOLAR_EVENTS:
            raise ValueError(f"solar: unknown event {event!r} (one of {', '.join(SOLAR_EVENTS)})")
        if not (-90 <= lat <= 90 and -180 <= lon <= 180):
            raise ValueError(f"solar: latitude {lat} / longitude {lon} out of range")
        self.event, self.lat, self.lon = event, lat, lon

    def event_on(self, day: date) -> datetime | None:
        """The event's UTC time on a (UTC) day, or None where the sun never gets there."""
        from astral import Observer, sun

        name, depression = SOLAR_EVENTS[self.event]
        function = getattr(sun, name)
        observer = Observer(self.lat, self.lon)
        try:
            when = function(observer, day, depression=depression) if depression else function(observer, day)
        except ValueError:
            return None
        return when.astimezone(UTC)  # type: ignore[no-any-return]

    def next_run(self, last_run_at: datetime, tz: tzinfo) -> datetime:
        after = last_run_at.astimezone(UTC)
        day = after.date() - timedelta(days=1)
        for _ in range(400):
            when = self.event_on(day)
            if when is not None and when > after:
                return when
            day += timedelta(days=1)
        raise ValueError(f"{self!r} does not happen within a year")

    def to_dict(self) -> dict[str, Any]:
        return {"type": "solar", "event": self.event, "lat": self.lat, "lon": self.lon}

    def __repr__(self) -> str:
        return f"<solar: {self.event} at latitude {self.lat}, longitude {self.lon}>"


def maybe_schedule(value: Any) -> BaseSchedule:
    """A schedule from a beat_schedule entry: seconds, a timedelta, or a schedule."""
    if isinstance(value, BaseSchedule):
        return value
    if isinstance(value, (int, float, timedelta)) and not isinstance(value, bool):
        return schedule(value)
    raise ValueError(f"a schedule is seconds, a timedelta, crontab(...) or solar(...), not {value!r}")


def schedule_from_dict(data: dict[str, Any]) -> BaseSchedule:
    kind = data.get("type")
    if kind == "schedule":
        return schedule(data["seconds"], data.get("relative", False))
    if kind == "crontab":
        fields = ("minute", "hour", "day_of_week", "day_of_month", "month_of_year")
        return crontab(**{k: data[k] for k in fields if k in data})
    if kind == "solar":
        return solar(data["event"], data["lat"], data["lon"])
    raise ValueError(f"unknown schedule type {kind!r}")


__all__ = ["BaseSchedule", "crontab", "maybe_schedule", "schedule", "schedule_from_dict", "solar"]
