"""The worker's hook protocol: features plug in, and only what they override is called."""

from __future__ import annotations

import logging

import pytest

from conveyor import Conveyor
from conveyor.brokers.base import Delivery
from conveyor.execution import Job
from conveyor.messages import Message
from conveyor.worker.features import features
from conveyor.worker.hooks import Held, Hook, Hooks


def arrival(task_id: str) -> Held:
    return Held(Job(1, Message(task="t.add", id=task_id), "celery", "w@h"), Delivery("celery", b"", None))


class DropsOdd(Hook):
    def admit(self, arrivals: list[Held]) -> list[Held]:
        return [h for h in arrivals if int(h.job.message.id) % 2 == 0]


class Records(Hook):
    def __init__(self) -> None:
        self.seen: list[str] = []

    def admit(self, arrivals: list[Held]) -> list[Held]:
        self.seen += [h.job.message.id for h in arrivals]
        return arrivals


def test_admit_runs_hook_after_hook_and_a_later_hook_sees_only_what_went_on() -> None:
    later = Records()
    hooks = Hooks([DropsOdd(), later])
    admitted = hooks.admit([arrival(str(n)) for n in range(5)])
    assert [h.job.message.id for h in admitted] == ["0", "2", "4"]
    assert later.seen == ["0", "2", "4"]


def test_only_the_hooks_that_override_a_method_are_called_for_it() -> None:
    class Ticks(Hook):
        def tick(self, now: float) -> None:
            pass

    ticks, records = Ticks(), Records()
    hooks = Hooks([ticks, records])
    assert hooks.ticking == [ticks]
    assert hooks.admitting == [records]
    assert hooks.starting == [] and hooks.storing == []


def test_a_failing_tick_is_logged_and_the_other_hooks_still_tick(caplog: pytest.LogCaptureFixture) -> None:
    ticked: list[float] = []

    class Broken(Hook):
        def tick(self, now: float) -> None:
            raise RuntimeError("a bug")

    class Counts(Hook):
        def tick(self, now: float) -> None:
            ticked.append(now)

    with caplog.at_level(logging.ERROR, logger="conveyor.worker"):
        Hooks([Broken(), Counts()]).tick(1.0)
    assert ticked == [1.0]
    assert "Periodic work of Broken failed" in caplog.text


def test_the_feature_list_follows_the_settings() -> None:
    app = Conveyor("t", broker="memory://", backend="memory://")
    names = [type(h).__name__ for h in features(app)]
    assert names[:5] == ["TaskLog", "Chords", "Revocations", "Screening", "RateLimits"]
    assert "TaskEvents" in names and "EmbeddedBeat" not in names and "AdaptivePrefetch" in names
    app.conf.worker_send_task_events = False
    app.conf.worker_disable_rate_limits = True
    app.conf.worker_prefetch_adaptive = False
    names = [type(h).__name__ for h in features(app, beat=True)]
    assert "RateLimits" not in names and "AdaptivePrefetch" not in names and "TaskEvents" not in names
    assert names[-1] == "EmbeddedBeat"
