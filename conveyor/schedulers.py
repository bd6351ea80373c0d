"""Celery's scheduler classes, for projects that bring a scheduler of their own.

Conveyor's beat (`conveyor.beat.Beat`) keeps its state in the state store and may run
in any number of processes. A project whose scheduler subclasses Celery's `Scheduler`
(entries read from its database, last runs kept elsewhere) names the class in
`beat_scheduler` (or `conveyor beat -S`), and beat then runs it the way Celery's beat
does: in one process, `tick()` after `tick()`, each tick sending at most one due entry
and saying how long to sleep. `PersistentScheduler` keeps entries and last run times in
a local `shelve` file (`beat_schedule_filename`), as Celery's default scheduler does.
Importable from `conveyor.beat`, Celery's path.
"""

from __future__ import annotations

import copy
import heapq
import itertools
import logging
import shelve
import threading
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, tzinfo
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from conveyor.app import symbol_by_name
from conveyor.exceptions import ImproperlyConfigured
from conveyor.schedules import BaseSchedule, maybe_schedule

if TYPE_CHECKING:
    from conveyor.app import Conveyor

logger = logging.getLogger("conveyor.beat")

#: The longest a scheduler sleeps between ticks when `beat_max_loop_interval` is not set.
DEFAULT_MAX_INTERVAL = 300.0


class SchedulingError(Exception):
    """An entry could not be sent."""


class ScheduleEntry:
    """One periodic task of a scheduler: what to send, on which schedule, when it last ran."""

    def __init__(
        self,
        name: str | None = None,
        task: str | None = None,
        last_run_at: datetime | None = None,
        total_run_count: int | None = None,
        schedule: Any = None,
        args: Any = (),
        kwargs: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        relative: bool = False,
        app: Conveyor | None = None,
    ) -> None:
        self.app = app
        self.name = name
        self.task = task
        self.args = args
        self.kwargs = dict(kwargs) if kwargs else {}
        self.options = dict(options) if options else {}
        self.schedule: BaseSchedule = maybe_schedule(schedule)
        self.last_run_at = last_run_at or self.default_now()
        self.total_run_count = total_run_count or 0

    def default_now(self) -> datetime:
        return datetime.now(UTC)

    def _next_instance(self, last_run_at: datetime | None = None) -> ScheduleEntry:
        """The entry after a run: a copy with the run time and count moved on."""
        fields = {**dict(self), "last_run_at": last_run_at or self.default_now()}
        fields["total_run_count"] = self.total_run_count + 1
        return type(self)(**fields)

    __next__ = next = _next_instance

    def is_due(self) -> tuple[bool, float]:
        """(due now?, seconds until the next check), as `schedule.is_due` says."""
        return self.schedule.is_due(self.last_run_at, tz=self.timezone())

    def timezone(self) -> tzinfo:
        """The app's `timezone` (crontab fields are read in it); UTC without one."""
        name = self.app.conf.timezone if self.app is not None else None
        return ZoneInfo(name) if name else UTC

    def update(self, other: ScheduleEntry) -> None:
        """Take the editable fields of `other`: task, schedule, args, kwargs, options."""
        self.task, self.schedule = other.task, other.schedule
        self.args, self.kwargs, self.options = other.args, other.kwargs, other.options

    def editable_fields_equal(self, other: ScheduleEntry) -> bool:
        return all(getattr(self, a) == getattr(other, a) for a in ("task", "args", "kwargs", "options", "schedule"))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ScheduleEntry) and self.editable_fields_equal(other)

    # Mutable and compared by its fields: not hashable.
    __hash__ = None  # type: ignore[assignment]

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        """Its constructor's arguments, so `type(entry)(**dict(entry))` copies it."""
        return iter(
            {
                "name": self.name, "task": self.task, "last_run_at": self.last_run_at,
                "total_run_count": self.total_run_count, "schedule": self.schedule, "args": self.args,
                "kwargs": self.kwargs, "options": self.options, "app": self.app,
            }.items()
        )  # fmt: skip

    def __reduce__(self) -> Any:
        return type(self), (self.name, self.task, self.last_run_at, self.total_run_count, self.schedule,
                            self.args, self.kwargs, self.options)  # fmt: skip

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.name} {self.task}(*{self.args!r}, **{self.kwargs!r}) {self.schedule!r}>"


class Scheduler:
    """Celery's scheduler: entries in `schedule` (a dict by name), due ones sent by `tick()`.

    Subclasses override `setup_schedule` (where entries come from), the `schedule`
    property, `sync` (save what `reserve` changed) and `close`; `Entry` names their
    entry class. With `lazy=True` nothing is set up (beat makes one to show its info).
    """

    Entry: type[ScheduleEntry] = ScheduleEntry
    max_interval = DEFAULT_MAX_INTERVAL
    #: Seconds between syncs, and sends that force one (None: no count).
    sync_every = 180.0
    sync_every_tasks: int | None = None

    def __init__(
        self,
        app: Conveyor,
        schedule: dict[str, ScheduleEntry] | None = None,
        max_interval: float | None = None,
        Producer: Any = None,  # noqa: N803 - Celery's argument; Conveyor's producer is the app's
        lazy: bool = False,
        sync_every_tasks: int | None = None,
        **kwargs: Any,
    ) -> None:
        self.app = app
        self.data: dict[str, ScheduleEntry] = {} if schedule is None else schedule
        self.max_interval = max_interval or app.conf.beat_max_loop_interval or self.max_interval
        self.sync_every_tasks = app.conf.beat_sync_every if sync_every_tasks is None else sync_every_tasks
        self._heap: list[tuple[float, int, ScheduleEntry]] | None = None
        self._heaped: dict[str, ScheduleEntry] | None = None
        self._order = itertools.count()
        self._last_sync: float | None = None
        self._tasks_since_sync = 0
        if not lazy:
            self.setup_schedule()

    # -- where entries come from ---------------------------------------------------------
    def get_schedule(self) -> dict[str, ScheduleEntry]:
        return self.data

    def set_schedule(self, schedule: dict[str, ScheduleEntry]) -> None:
        self.data = schedule

    schedule = property(get_schedule, set_schedule)

    def setup_schedule(self) -> None:
        """The entries of `beat_schedule`."""
        self.install_default_entries(self.data)
        self.merge_inplace(self.app.conf.beat_schedule)

    def install_default_entries(self, data: Mapping[str, Any]) -> None:
        """Celery adds a result clean-up entry here; Conveyor's workers expire results themselves."""

    def add(self, **kwargs: Any) -> ScheduleEntry:
        entry = self.Entry(app=self.app, **kwargs)
        self.schedule[entry.name] = entry
        return entry

    def update_from_dict(self, entries: Mapping[str, Any]) -> None:
        self.schedule.update({name: self._maybe_entry(name, entry) for name, entry in entries.items()})

    def merge_inplace(self, entries: Mapping[str, Any]) -> None:
        """Make the schedule hold exactly `entries`: drop others, update kept ones (their last
        run stays), add new ones."""
        schedule = self.schedule
        for name in set(schedule) - set(entries):
            schedule.pop(name, None)
        for name, spec in entries.items():
            entry = self._maybe_entry(name, spec)
            if schedule.get(name):
                schedule[name].update(entry)
            else:
                schedule[name] = entry

    def _maybe_entry(self, name: str, entry: Any) -> ScheduleEntry:
        if isinstance(entry, self.Entry):
            entry.app = self.app
            return entry
        return self.Entry(**{**dict(entry), "name": name, "app": self.app})

    # -- running ---------------------------------------------------------------------------
    def tick(self) -> float:
        """Send at most one due entry; the seconds to sleep before the next tick."""
        if self._heap is None or not self.schedules_equal(self._heaped, self.schedule):
            self._heaped = copy.copy(self.schedule)
            self._populate_heap()
        heap = self._heap
        assert heap is not None
        if not heap:
            return self.max_interval
        when, _, entry = heap[0]
        now = time.time()
        if when > now:
            return min(when - now, self.max_interval)
        due, next_in = self._checked(entry)
        heapq.heappop(heap)
        if due:
            following = self.reserve(entry)
            self.apply_entry(entry)
            heapq.heappush(heap, (now + next_in, next(self._order), following))
            return 0.0
        # Not due after all (a clock that moved): look again when it says, and let others go first.
        heapq.heappush(heap, (now + next_in, next(self._order), entry))
        return 0.0 if heap[0][2] is not entry else min(next_in, self.max_interval)

    def _populate_heap(self) -> None:
        now = time.time()
        self._heap = []
        for entry in self.schedule.values():
            due, next_in = self._checked(entry)
            self._heap.append((now + (0.0 if due else next_in), next(self._order), entry))
        heapq.heapify(self._heap)

    def _checked(self, entry: ScheduleEntry) -> tuple[bool, float]:
        try:
            return self.is_due(entry)
        except Exception:  # one broken entry must not stop the others
            logger.exception("beat: Cannot calculate the next run of %r; trying again later", entry.name)
            return False, self.max_interval

    def is_due(self, entry: ScheduleEntry) -> tuple[bool, float]:
        return entry.is_due()

    def schedules_equal(self, old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> bool:
        if old is None or new is None:
            return old is new
        return old.keys() == new.keys() and all(new.get(name) == entry for name, entry in old.items())

    def reserve(self, entry: ScheduleEntry) -> ScheduleEntry:
        """Record a run of `entry` (before it is sent: a failing send does not repeat forever)."""
        following = self.schedule[entry.name] = next(entry)
        return following

    def apply_entry(self, entry: ScheduleEntry, producer: Any = None) -> None:
        logger.info("Scheduler: Sending due task %s (%s)", entry.name, entry.task)
        try:
            self.apply_async(entry, producer=producer, advance=False)
        except Exception as exc:
            logger.error("Scheduler: Could not send %s (%s): %s", entry.name, entry.task, exc)

    def apply_async(self, entry: ScheduleEntry, producer: Any = None, advance: bool = True, **kwargs: Any) -> Any:
        """Send one run of `entry` (recording it first when `advance`); its AsyncResult."""
        entry = self.reserve(entry) if advance else entry
        try:
            options = {**entry.options, "headers": {**entry.options.get("headers", {}), "celery_beat_task": True}}
            task = self.app.tasks.get(entry.task or "")
            if task is not None:
                return task.apply_async(entry.args, entry.kwargs, **options)
            return self.send_task(entry.task, entry.args, entry.kwargs, **options)
        except Exception as exc:
            raise SchedulingError(f"Couldn't apply scheduled task {entry.name}: {exc}") from exc
        finally:
            self._tasks_since_sync += 1
            if self.should_sync():
                self._do_sync()

    def send_task(self, *args: Any, **kwargs: Any) -> Any:
        return self.app.send_task(*args, **kwargs)

    # -- saving ------------------------------------------------------------------------------
    def should_sync(self) -> bool:
        return (
            self._last_sync is None
            or time.monotonic() - self._last_sync > self.sync_every
            or bool(self.sync_every_tasks and self._tasks_since_sync >= self.sync_every_tasks)
        )

    def _do_sync(self) -> None:
        try:
            self.sync()
        finally:
            self._last_sync = time.monotonic()
            self._tasks_since_sync = 0

    def sync(self) -> None:
        """Save the schedule (run times and counts); nothing to do for one kept in memory."""

    def close(self) -> None:
        self.sync()

    @property
    def info(self) -> str:
        return ""


class PersistentScheduler(Scheduler):
    """Entries and their last runs kept in a local `shelve` file, across restarts."""

    def __init__(self, *args: Any, schedule_filename: str | None = None, **kwargs: Any) -> None:
        self._store: Any = None
        self.schedule_filename = schedule_filename
        super().__init__(*args, **kwargs)

    def setup_schedule(self) -> None:
        if self.schedule_filename is None:
            self.schedule_filename = self.app.conf.beat_schedule_filename
        self._store = shelve.open(self.schedule_filename, writeback=True)  # noqa: SIM115 - open until close()
        timezone = self.app.conf.timezone
        if "entries" not in self._store or self._store.get("tz") != timezone:
            self._store.clear()  # new, or made under another timezone: crontab times would be off
            self._store["entries"] = {}
        self.merge_inplace(self.app.conf.beat_schedule)
        self.install_default_entries(self.schedule)
        self._store["tz"] = timezone
        for entry in self.schedule.values():
            entry.app = self.app  # entries read back from the file come without one
        self.sync()

    def get_schedule(self) -> dict[str, ScheduleEntry]:
        return self._store["entries"]  # type: ignore[no-any-return]

    def set_schedule(self, schedule: dict[str, ScheduleEntry]) -> None:
        self._store["entries"] = schedule

    schedule = property(get_schedule, set_schedule)

    def sync(self) -> None:
        if self._store is not None:
            self._store.sync()

    def close(self) -> None:
        self.sync()
        if self._store is not None:
            self._store.close()
            self._store = None

    @property
    def info(self) -> str:
        return f"    . db -> {self.schedule_filename}"


def run(scheduler: Scheduler, stop: threading.Event) -> None:
    """Tick until `stop` is set, then close the scheduler (Celery's beat service loop)."""
    logger.info("beat: Starting with %s (%d entries)", type(scheduler).__name__, len(scheduler.schedule))
    try:
        while not stop.is_set():
            interval = scheduler.tick()
            if interval > 0:
                stop.wait(interval)
    finally:
        scheduler.close()


def configured(
    app: Conveyor, max_interval: float | None = None, scheduler: str | None = None, filename: str | None = None
) -> Scheduler | None:
    """The scheduler `scheduler` or `beat_scheduler` names, set up; None for Conveyor's own beat."""
    spec = scheduler or app.conf.beat_scheduler
    if spec is None:
        return None
    found = symbol_by_name(spec) if isinstance(spec, str) else spec
    if not (isinstance(found, type) and issubclass(found, Scheduler)):
        raise ImproperlyConfigured(f"beat_scheduler must name a subclass of conveyor.beat.Scheduler, not {spec!r}")
    app.finalize()  # task modules imported, periodic tasks added by on_after_configure receivers
    return found(app=app, max_interval=max_interval, schedule_filename=filename or app.conf.beat_schedule_filename)
