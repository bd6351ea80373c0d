"""Beat: submits periodic tasks, safely from any number of processes on any hosts.

Entries come from `beat_schedule` (read at start) and from a runtime store in
the broker (`ScheduleStore`: add, change, remove while running, e.g. from the
dashboard). Each entry's last run time lives in the broker too, not in a local
file, and a run is claimed by swapping that time atomically
(`StateStore.kv_swap`): of all the beats that see a run due, exactly one wins and
submits it. Every beat checks at least once a second, so when the one that was
submitting dies another takes over within about a second; a restarted beat
neither repeats a run (the time is in the broker) nor skips one.

Runs missed while no beat was up: one catch-up run at start (missed interval
ticks collapse into one), unless `beat_cron_starting_deadline` is set and a
crontab or solar run is later than that many seconds: then it is skipped.

A project with a Celery scheduler of its own (`Scheduler`, `PersistentScheduler`,
`ScheduleEntry`, here at Celery's path) names it in `beat_scheduler`, and beat runs
that instead (`conveyor.schedulers`).
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from conveyor.control import sealed, trusted
from conveyor.exceptions import BrokerError, ConveyorError, ImproperlyConfigured
from conveyor.schedulers import PersistentScheduler, ScheduleEntry, Scheduler, SchedulingError
from conveyor.schedules import BaseSchedule, maybe_schedule, schedule, schedule_from_dict

if TYPE_CHECKING:
    from conveyor.app import Conveyor

logger = logging.getLogger("conveyor.beat")

LAST_RUN = "beat:last-run"
ENTRIES = "beat:entries"
ENTRY_KEYS = {"task", "schedule", "args", "kwargs", "options", "relative"}


@dataclass(frozen=True)
class Entry:
    name: str
    task: str
    schedule: BaseSchedule
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, name: str, spec: Any) -> Entry:
        if not isinstance(spec, dict) or "task" not in spec or "schedule" not in spec:
            raise ImproperlyConfigured(f"beat_schedule entry {name!r} needs at least 'task' and 'schedule'")
        unknown = set(spec) - ENTRY_KEYS
        if unknown:
            raise ImproperlyConfigured(f"beat_schedule entry {name!r}: unknown keys {sorted(unknown)}")
        try:
            when = maybe_schedule(spec["schedule"])
        except ValueError as exc:
            raise ImproperlyConfigured(f"beat_schedule entry {name!r}: {exc}") from None
        return cls(name, spec["task"], when, tuple(spec.get("args") or ()), dict(spec.get("kwargs") or {}),
                   dict(spec.get("options") or {}))  # fmt: skip

    def to_json(self) -> bytes:
        return json.dumps({"task": self.task, "schedule": self.schedule.to_dict(), "args": list(self.args),
                           "kwargs": self.kwargs, "options": self.options}).encode()  # fmt: skip

    @classmethod
    def from_json(cls, name: str, raw: bytes) -> Entry:
        data = json.loads(raw)
        return cls(name, data["task"], schedule_from_dict(data["schedule"]), tuple(data.get("args") or ()),
                   dict(data.get("kwargs") or {}), dict(data.get("options") or {}))  # fmt: skip


class ScheduleStore:
    """Periodic entries changed at runtime, kept in the broker: every beat sees them within a second."""

    def __init__(self, app: Conveyor) -> None:
        self.app = app

    def add(
        self,
        name: str,
        task: str,
        schedule: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        options: dict[str, Any] | None = None,
    ) -> Entry:
        """Add or replace an entry."""
        entry = Entry(name, task, maybe_schedule(schedule), tuple(args), dict(kwargs or {}), dict(options or {}))
        self.app.state.kv_put(ENTRIES, name, sealed(self.app, entry.to_json()))
        return entry

    def remove(self, name: str) -> bool:
        """Remove an entry added at runtime; False if there was none."""
        current = self.app.state.kv_get(ENTRIES, name)
        return current is not None and self.app.state.kv_swap(ENTRIES, name, current, None)

    def entries(self) -> dict[str, Entry]:
        """The entries added at run time (with signing on, those whose signature holds)."""
        entries = {}
        for name, raw in self.app.state.kv_items(ENTRIES).items():
            opened = trusted(self.app, raw, f"the periodic task {name!r}")
            if opened is not None:
                entries[name] = Entry.from_json(name, opened)
        return entries


def app_timezone(app: Conveyor) -> tzinfo:
    return ZoneInfo(app.conf.timezone) if app.conf.timezone else UTC


class Beat:
    def __init__(self, app: Conveyor, max_interval: float | None = None) -> None:
        self.app = app
        app.finalize()  # task modules imported, periodic tasks added by on_after_configure receivers
        self.max_interval = max_interval if max_interval is not None else app.conf.beat_max_loop_interval
        self.configured = {name: Entry.from_config(name, spec) for name, spec in app.conf.beat_schedule.items()}
        self.store = ScheduleStore(app)
        self.tz = app_timezone(app)
        self.sent = 0

    def entries(self) -> dict[str, Entry]:
        """The configuration's entries, with runtime ones added (a runtime entry of the same name wins)."""
        return {**self.configured, **self.store.entries()}

    def tick(self, now: datetime | None = None) -> float:
        """Submit every due entry this beat wins; seconds until the next check."""
        now = now or datetime.now(UTC)
        state = self.app.state
        last_runs = state.kv_items(LAST_RUN)
        wake = self.max_interval
        for name, entry in self.entries().items():
            raw = last_runs.get(name)
            if raw is None:
                # A new entry starts counting now (as in Celery): due one period from now.
                state.kv_swap(LAST_RUN, name, None, _stamp(now))
                continue
            last = _parse(raw)
            due = entry.schedule.next_run(last, self.tz)
            if due <= now:
                ran_at = entry.schedule.latest_tick(last, now)
                if state.kv_swap(LAST_RUN, name, raw, _stamp(ran_at)):
                    self._submit(entry, (now - due).total_seconds())
                due = entry.schedule.next_run(ran_at, self.tz)
            wake = min(wake, max(0.0, (due - now).total_seconds()))
        return wake

    def _submit(self, entry: Entry, late: float) -> None:
        deadline = self.app.conf.beat_cron_starting_deadline
        if deadline is not None and late > deadline and not isinstance(entry.schedule, schedule):
            logger.warning("Scheduler: Skipping %s (%s): missed by %.0fs > beat_cron_starting_deadline",
                           entry.name, entry.task, late)  # fmt: skip
            return
        logger.info("Scheduler: Sending due task %s (%s)", entry.name, entry.task)
        task = self.app.tasks.get(entry.task)
        try:
            if task is not None:
                task.apply_async(entry.args, entry.kwargs, **entry.options)
            else:
                self.app.send_task(entry.task, entry.args, entry.kwargs, **entry.options)
            self.app.confirm_published()
            self.sent += 1
        except (ConveyorError, TypeError, ValueError) as exc:
            logger.error("Scheduler: Could not send %s (%s): %s", entry.name, entry.task, exc)

    def run(self, stop: threading.Event | None = None) -> None:
        """Tick until `stop` is set."""
        stop = stop or threading.Event()
        logger.info("beat: Starting with %d entries: %s", len(self.entries()), ", ".join(sorted(self.entries())))
        failures = 0
        while not stop.is_set():
            try:
                wait = self.tick()
                if failures:
                    logger.warning("beat: the broker is reachable again")
                failures = 0
            except BrokerError as exc:
                if not failures:
                    logger.error("beat: cannot reach the broker (%s); retrying", exc)
                failures += 1
                wait = min(5.0, 0.2 * failures)
            stop.wait(wait)


def _stamp(moment: datetime) -> bytes:
    return repr(moment.timestamp()).encode()


def _parse(raw: bytes) -> datetime:
    return datetime.fromtimestamp(float(raw), UTC)


__all__ = [
    "Beat", "Entry", "PersistentScheduler", "ScheduleEntry", "ScheduleStore", "Scheduler", "SchedulingError",
    "app_timezone",
]  # fmt: skip
