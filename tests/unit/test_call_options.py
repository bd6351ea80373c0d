"""A call's options resolve once: the call over the task over the configuration; the message
is then a pure function of them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from conveyor import Celery
from conveyor.calls import CallOptions
from conveyor.messages import build_message


@pytest.fixture
def app() -> Celery:
    app = Celery("calls", broker="memory://calls")
    app.conf.task_default_priority = 7
    app.conf.task_serializer = "json"
    return app


def test_the_call_wins_over_the_task_and_the_task_over_the_configuration(app: Celery) -> None:
    @app.task(priority=3, serializer="pickle", time_limit=60, queue="slow")
    def job() -> None: ...

    plain = CallOptions.resolve(app.conf, {})
    from_task = CallOptions.resolve(app.conf, {}, job)
    from_call = CallOptions.resolve(app.conf, {"priority": 1, "serializer": "msgpack", "queue": "fast"}, job)
    assert (plain.priority, plain.serializer, plain.time_limit) == (7, "json", None)
    assert (from_task.priority, from_task.serializer, from_task.time_limit, from_task.task_queue) == (
        3, "pickle", 60, "slow",
    )  # fmt: skip
    assert (from_call.priority, from_call.serializer, from_call.queue) == (1, "msgpack", "fast")


def test_a_countdown_and_a_relative_expiry_count_from_now(app: Celery) -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    call = CallOptions.resolve(app.conf, {"countdown": 10, "expires": 60, "eta": now}, now=now)
    assert call.eta == now + timedelta(seconds=10)  # countdown wins over eta, as in Celery
    assert call.expires == now + timedelta(seconds=60)
    naive = CallOptions.resolve(app.conf, {"eta": "2030-01-01T00:00:00"})
    assert naive.eta == now  # a naive time is UTC


def test_a_priority_outside_0_to_255_is_refused(app: Celery) -> None:
    with pytest.raises(ValueError, match="0 \\(highest\\)"):
        CallOptions.resolve(app.conf, {"priority": 256})


def test_a_retry_policy_of_the_call_extends_the_configured_one(app: Celery) -> None:
    app.conf.task_publish_retry_policy = {"max_retries": 5, "interval_start": 1}
    call = CallOptions.resolve(app.conf, {"retry_policy": {"max_retries": 1}})
    assert call.retry_policy == {**app.conf.task_publish_retry_policy, "max_retries": 1}


def test_the_message_is_a_function_of_the_call_alone(app: Celery) -> None:
    call = CallOptions.resolve(app.conf, {"priority": 2, "headers": {"h": 1}, "link": {"task": "t"}})
    one = build_message("t", (1,), {"k": 2}, call, message_id="id", parent_id="p", root_id="r", reply_to="q")
    two = build_message("t", (1,), {"k": 2}, call, message_id="id", parent_id="p", root_id="r", reply_to="q")
    assert one == two and one.headers is not two.headers
    assert (one.priority, one.callbacks, one.parent_id, one.root_id, one.reply_to) == (
        2,
        [{"task": "t"}],
        "p",
        "r",
        "q",
    )
    own = CallOptions.resolve(app.conf, {"parent_id": "mine", "reply_to": "mine"})
    mine = build_message("t", (), None, own, message_id="id", parent_id="p", reply_to="q")
    assert (mine.parent_id, mine.reply_to, mine.root_id) == ("mine", "mine", "id")
