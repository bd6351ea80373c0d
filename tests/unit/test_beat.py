"""Beat's logic on the in-memory broker: persistence, dedup, runtime entries."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from conveyor import Celery
from conveyor.beat import Beat, ScheduleStore
from conveyor.exceptions import ImproperlyConfigured
from conveyor.schedules import crontab

T0 = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)


def make_app(**schedule: dict[str, object]) -> Celery:
    app = Celery("beatapp", broker=f"memory://{uuid.uuid4().hex}")

    @app.task(name="b.tick")
    def tick(n: int = 0) -> int:
        return n

    app.conf.beat_schedule = schedule
    return app


def sent(app: Celery) -> int:
    return app.broker.queue_sizes(["celery"]).get("celery", 0)


def test_interval_entry_runs_once_per_period() -> None:
    app = make_app(every={"task": "b.tick", "schedule": 10.0})
    beat = Beat(app)
    beat.tick(T0)  # a new entry starts counting now
    assert sent(app) == 0
    beat.tick(T0 + timedelta(seconds=9))
    assert sent(app) == 0
    assert beat.tick(T0 + timedelta(seconds=10)) <= 1.0
    assert sent(app) == 1
    beat.tick(T0 + timedelta(seconds=10.5))
    assert sent(app) == 1


def test_many_beats_submit_each_run_once() -> None:
    app = make_app(every={"task": "b.tick", "schedule": 1.0})
    beats = [Beat(app) for _ in range(3)]
    for second in range(11):
        for beat in beats:
            beat.tick(T0 + timedelta(seconds=second))
    assert sent(app) == 10
    assert sum(b.sent for b in beats) == 10


def test_restart_neither_repeats_nor_skips() -> None:
    app = make_app(every={"task": "b.tick", "schedule": 5.0})
    Beat(app).tick(T0)
    Beat(app).tick(T0 + timedelta(seconds=5))
    assert sent(app) == 1
    restarted = Beat(app)  # a new process: the state is in the broker
    restarted.tick(T0 + timedelta(seconds=6))
    assert sent(app) == 1
    restarted.tick(T0 + timedelta(seconds=10))
    assert sent(app) == 2


def test_missed_runs_collapse_into_one_catch_up_run() -> None:
    app = make_app(every={"task": "b.tick", "schedule": 5.0})
    Beat(app).tick(T0)
    Beat(app).tick(T0 + timedelta(seconds=60))  # down for a minute
    assert sent(app) == 1
    beat = Beat(app)
    beat.tick(T0 + timedelta(seconds=61))
    assert sent(app) == 1
    beat.tick(T0 + timedelta(seconds=65))  # the phase is kept: 60, 65, 70 ...
    assert sent(app) == 2


def test_after_downtime_the_catch_up_run_and_the_next_keep_their_spacing() -> None:
    """Beat back after a pause, 63 ms before a tick: one catch-up run now, the next a full interval
    later (not 63 ms later)."""
    app = make_app(every={"task": "b.tick", "schedule": 2.0})
    Beat(app).tick(T0)
    beat = Beat(app)
    beat.tick(T0 + timedelta(seconds=9.937))  # down since T0: the missed runs collapse into this one
    assert sent(app) == 1
    beat.tick(T0 + timedelta(seconds=10))
    assert sent(app) == 1
    beat.tick(T0 + timedelta(seconds=11.9))
    assert sent(app) == 1
    beat.tick(T0 + timedelta(seconds=11.94))
    assert sent(app) == 2


def test_cron_starting_deadline_skips_stale_runs() -> None:
    app = make_app(hourly={"task": "b.tick", "schedule": crontab(minute=0)})
    app.conf.beat_cron_starting_deadline = 60
    Beat(app).tick(T0)
    Beat(app).tick(T0 + timedelta(hours=1, minutes=30))  # missed by 30 minutes
    assert sent(app) == 0
    Beat(app).tick(T0 + timedelta(hours=2))
    assert sent(app) == 1


def test_runtime_entries_are_added_changed_and_removed() -> None:
    app = make_app()
    store = ScheduleStore(app)
    store.add("dynamic", "b.tick", 2.0, args=(7,), options={"queue": "periodic"})
    beat = Beat(app)
    assert set(beat.entries()) == {"dynamic"}
    beat.tick(T0)
    beat.tick(T0 + timedelta(seconds=2))
    assert app.broker.queue_sizes(["periodic"]) == {"periodic": 1}
    store.add("dynamic", "b.tick", crontab(minute="*/5"))
    assert isinstance(beat.entries()["dynamic"].schedule, crontab)
    assert store.remove("dynamic") and not store.remove("dynamic")
    assert beat.entries() == {}


def test_bad_entries_are_clear_errors() -> None:
    with pytest.raises(ImproperlyConfigured, match="'broken' needs at least 'task' and 'schedule'"):
        Beat(make_app(broken={"schedule": 1.0}))
    with pytest.raises(ImproperlyConfigured, match="'odd': unknown keys \\['every'\\]"):
        Beat(make_app(odd={"task": "b.tick", "schedule": 1.0, "every": 2}))
    with pytest.raises(ImproperlyConfigured, match="'weird': a schedule is seconds"):
        Beat(make_app(weird={"task": "b.tick", "schedule": "often"}))


def test_periodic_tasks_added_when_the_app_is_configured_are_sent_by_beat() -> None:
    from conveyor.messages import decode

    app = make_app()
    configured: list[object] = []

    @app.on_after_configure.connect
    def setup_periodic_tasks(sender: Celery, **kwargs: object) -> None:
        configured.append(sender)
        sender.add_periodic_task(10.0, app.tasks["b.tick"].s(7), name="tick every 10")
        sender.add_periodic_task(crontab(minute="*"), app.tasks["b.tick"].s(), priority=3)

    finalized: list[object] = []
    app.on_after_finalize.connect(lambda sender, **kwargs: finalized.append(sender))
    beat = Beat(app)
    assert configured == [app] and finalized == [app]
    assert set(app.conf.beat_schedule) == {"tick every 10", repr(app.tasks["b.tick"].s())}
    Beat(app)  # finalized once
    assert configured == [app]
    beat.tick(T0)
    beat.tick(T0 + timedelta(seconds=10))
    assert sent(app) >= 1
    [delivery] = [d for d in app.broker.fetch(["celery"], 10, 0.1) if decode(d.body).args == (7,)]
    assert decode(delivery.body).task == "b.tick"
