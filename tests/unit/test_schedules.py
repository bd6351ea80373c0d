"""Schedule arithmetic: crontab fields as Celery parses them, DST, solar times."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from conveyor.schedules import crontab, maybe_schedule, schedule, schedule_from_dict, solar

UTC = UTC
NEW_YORK = ZoneInfo("America/New_York")


@pytest.mark.parametrize(
    ("kwargs", "field", "expected"),
    [
        ({"minute": "*/15"}, "minute", {0, 15, 30, 45}),
        ({"minute": 5}, "minute", {5}),
        ({"minute": "1,15,30"}, "minute", {1, 15, 30}),
        ({"minute": "0-10/5"}, "minute", {0, 5, 10}),
        ({"hour": "0-5"}, "hour", {0, 1, 2, 3, 4, 5}),
        ({"hour": "*/6"}, "hour", {0, 6, 12, 18}),
        ({"hour": "22-2"}, "hour", {22, 23, 0, 1, 2}),
        ({"day_of_week": "mon-fri"}, "day_of_week", {1, 2, 3, 4, 5}),
        ({"day_of_week": "sun"}, "day_of_week", {0}),
        ({"day_of_week": "sunday,saturday"}, "day_of_week", {0, 6}),
        ({"day_of_week": 7}, "day_of_week", {0}),
        ({"day_of_week": "*/2"}, "day_of_week", {0, 2, 4, 6}),
        ({"day_of_month": "1-10/3"}, "day_of_month", {1, 4, 7, 10}),
        ({"month_of_year": "jan-mar"}, "month_of_year", {1, 2, 3}),
        ({"month_of_year": "*/3"}, "month_of_year", {1, 4, 7, 10}),
        ({}, "minute", set(range(60))),
        ({}, "day_of_month", set(range(1, 32))),
    ],
)
def test_crontab_fields_are_sets_like_celerys(kwargs: dict[str, object], field: str, expected: set[int]) -> None:
    assert getattr(crontab(**kwargs), field) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"minute": 60}, "minute: 60 is outside 0-59"),
        ({"hour": "25"}, "hour: 25 is outside 0-23"),
        ({"day_of_week": "funday"}, "day_of_week: invalid day_of_week literal 'funday'"),
        ({"month_of_year": "13"}, "month_of_year: 13 is outside 1-12"),
        ({"minute": "*/0"}, "minute: a step of 0"),
        ({"minute": "1-"}, "minute: cannot parse '1-'"),
    ],
)
def test_bad_crontab_fields_name_the_field(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("*", r"\*")):
        crontab(**kwargs)  # type: ignore[arg-type]


def test_crontab_next_run() -> None:
    every_quarter = crontab(minute="*/15")
    assert every_quarter.next_run(datetime(2026, 1, 5, 10, 7, tzinfo=UTC), UTC) == datetime(
        2026, 1, 5, 10, 15, tzinfo=UTC
    )
    weekdays_9 = crontab(minute=0, hour=9, day_of_week="mon-fri")
    # Friday 2026-01-09 10:00 -> Monday 2026-01-12 09:00
    assert weekdays_9.next_run(datetime(2026, 1, 9, 10, 0, tzinfo=UTC), UTC) == datetime(2026, 1, 12, 9, 0, tzinfo=UTC)
    # A day must match both day_of_month and day_of_week (Celery's rule): Friday the 13th.
    friday_13 = crontab(minute=0, hour=0, day_of_month=13, day_of_week="fri")
    assert friday_13.next_run(datetime(2026, 1, 1, tzinfo=UTC), UTC) == datetime(2026, 2, 13, tzinfo=UTC)


def test_crontab_is_wall_clock_in_the_timezone() -> None:
    shanghai = ZoneInfo("Asia/Shanghai")
    morning = crontab(minute=0, hour=8)
    due = morning.next_run(datetime(2026, 6, 1, 0, 0, tzinfo=UTC), shanghai)
    assert due == datetime(2026, 6, 2, 0, 0, tzinfo=UTC)  # 08:00 in Shanghai is 00:00 UTC


def runs_between(schedule_: crontab, start: datetime, end: datetime, tz: ZoneInfo) -> list[datetime]:
    runs, last = [], start
    while True:
        last = schedule_.next_run(last, tz)
        if last > end:
            return runs
        runs.append(last.astimezone(tz))


def test_spring_forward_runs_a_missing_time_once_at_the_first_valid_time() -> None:
    """2026-03-08 in New York: 02:00-03:00 does not exist; a 02:30 job runs once, at 03:00."""
    runs = runs_between(
        crontab(minute=30, hour=2), datetime(2026, 3, 6, tzinfo=UTC), datetime(2026, 3, 10, tzinfo=UTC), NEW_YORK
    )
    assert [r.strftime("%m-%d %H:%M %Z") for r in runs] == [
        "03-06 02:30 EST",
        "03-07 02:30 EST",
        "03-08 03:00 EDT",
        "03-09 02:30 EDT",
    ]


def test_fall_back_runs_a_repeated_time_once() -> None:
    """2026-11-01 in New York: 01:00-02:00 happens twice; a 01:30 job runs once, at the first."""
    runs = runs_between(
        crontab(minute=30, hour=1), datetime(2026, 10, 30, tzinfo=UTC), datetime(2026, 11, 3, tzinfo=UTC), NEW_YORK
    )
    assert [r.strftime("%m-%d %H:%M %Z") for r in runs] == [
        "10-30 01:30 EDT",
        "10-31 01:30 EDT",
        "11-01 01:30 EDT",
        "11-02 01:30 EST",
    ]
    hourly = runs_between(
        crontab(minute=30), datetime(2026, 11, 1, 4, tzinfo=UTC), datetime(2026, 11, 1, 9, tzinfo=UTC), NEW_YORK
    )
    assert len({r.strftime("%H:%M") for r in hourly}) == len(hourly)  # no wall-clock time twice


@pytest.mark.parametrize(
    ("event", "lat", "lon", "day", "published_utc"),
    [
        # NOAA solar calculator, London, 2024-06-21: sunrise 04:43 BST, sunset 21:21 BST.
        ("sunrise", 51.5074, -0.1278, (2024, 6, 21), (3, 43)),
        ("sunset", 51.5074, -0.1278, (2024, 6, 21), (20, 21)),
        # New York, 2024-12-21: sunrise 07:16 EST, solar noon 11:54 EST.
        ("sunrise", 40.7128, -74.0060, (2024, 12, 21), (12, 16)),
        ("solar_noon", 40.7128, -74.0060, (2024, 12, 21), (16, 54)),
    ],
)
def test_solar_events_match_published_times(
    event: str, lat: float, lon: float, day: tuple[int, int, int], published_utc: tuple[int, int]
) -> None:
    when = solar(event, lat, lon).next_run(datetime(*day, 0, 0, tzinfo=UTC), UTC)
    expected = datetime(*day, *published_utc, tzinfo=UTC)
    assert abs((when - expected).total_seconds()) < 120, when


def test_solar_skips_days_the_sun_never_reaches_the_horizon() -> None:
    # No astronomical dusk in London around midsummer: the next one is weeks later.
    when = solar("dusk_astronomical", 51.5074, -0.1278).next_run(datetime(2024, 6, 21, tzinfo=UTC), UTC)
    assert when > datetime(2024, 7, 20, tzinfo=UTC)


def test_bad_solar_event() -> None:
    with pytest.raises(ValueError, match="unknown event 'moonrise'"):
        solar("moonrise", 0, 0)


def test_interval_schedules_and_round_trip() -> None:
    assert maybe_schedule(30.0) == schedule(timedelta(seconds=30))
    every = schedule(10)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    assert every.next_run(start, UTC) == start + timedelta(seconds=10)
    # On time, a run counts from its tick (no drift); late, from when it was sent (full spacing).
    assert every.latest_tick(start, start + timedelta(seconds=10.5)) == start + timedelta(seconds=10)
    assert every.latest_tick(start, start + timedelta(seconds=35)) == start + timedelta(seconds=35)
    assert every.is_due(start, start + timedelta(seconds=11)) == (True, 10.0)
    for original in (schedule(5), crontab(minute="*/5", day_of_week="mon-fri"), solar("sunset", 1.0, 2.0)):
        assert schedule_from_dict(original.to_dict()).to_dict() == original.to_dict()


def test_day_of_week_star_is_the_seven_days_as_in_celery() -> None:
    assert crontab(day_of_week="*").day_of_week == {0, 1, 2, 3, 4, 5, 6}
    assert crontab(day_of_week="7").day_of_week == {0}
    assert crontab(day_of_week="5-7").day_of_week == {5, 6, 0}


@pytest.mark.parametrize(("day", "month"), [("31", "4"), ("30", "2"), ("31", "apr,jun")])
def test_a_crontab_that_can_never_fire_is_an_error(day: str, month: str) -> None:
    with pytest.raises(ValueError, match="never occurs in month_of_year"):
        crontab(day_of_month=day, month_of_year=month)
    crontab(day_of_month="29", month_of_year="2")  # leap years have it


def test_remaining_estimate_and_is_due_in_celerys_form() -> None:
    every_minute = crontab(minute="*")
    last = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)
    assert every_minute.remaining_estimate(last, now=last + timedelta(seconds=20)) == timedelta(seconds=40)
    assert every_minute.is_due(last, now=last + timedelta(seconds=20)) == (False, 40.0)
    due, next_in = schedule(10).is_due(last, now=last + timedelta(seconds=10))
    assert due and next_in == 10.0
