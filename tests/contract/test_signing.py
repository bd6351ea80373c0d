"""Signed messages on every broker: a worker with signing on runs what a key holder sent and
refuses or ignores everything else (task messages, control commands, revocations, rate limits)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor import Celery, states
from conveyor.brokers.base import Outgoing
from conveyor.control import RATE_LIMITS
from tests.conftest import BROKERS, contract_app, store_url
from tests.contract.test_remote_control import running


def signed_app(store: tuple[str, dict[str, str]], key: str | None) -> Celery:
    app = contract_app("signed", store)
    app.conf.task_signing_key = key

    @app.task(name="s.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="s.sleep")
    def sleep(seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    return app


@pytest.fixture(params=BROKERS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, dict[str, str]]:
    return store_url(request.param, tmp_path)


@pytest.fixture
def apps(store: tuple[str, dict[str, str]]) -> Iterator[tuple[Celery, Celery, Celery]]:
    """The key holder's app, an app without a key, and one with another key, on one broker."""
    made = signed_app(store, "the-key"), signed_app(store, None), signed_app(store, "another-key")
    yield made
    for app in made:
        app.close()


def dead_letter_reasons(app: Celery) -> list[str]:
    return [letter.reason for letter in app.broker.dead_letters(100)]


def test_unsigned_and_wrongly_signed_tasks_go_to_the_dead_letters_and_signed_ones_run(
    apps: tuple[Celery, Celery, Celery],
) -> None:
    holder, keyless, stranger = apps
    with running(holder):
        unsigned = keyless.tasks["s.add"].delay(1, 1)
        forged = stranger.tasks["s.add"].delay(2, 2)
        assert holder.tasks["s.add"].delay(3, 3).get(timeout=10) == 6
        deadline = time.monotonic() + 10
        while len(dead_letter_reasons(holder)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        reasons = dead_letter_reasons(holder)
        assert sorted(reasons) == [
            "bad signature: signed with an unknown key, or altered",
            "bad signature: unsigned",
        ]
        assert unsigned.state == forged.state == states.PENDING  # nothing of them was read
        assert holder.control.ping() == [{"w1@ctl": {"ok": "pong"}}]  # and the worker runs on


def test_control_commands_without_the_key_are_ignored(apps: tuple[Celery, Celery, Celery]) -> None:
    holder, keyless, stranger = apps
    with running(holder) as worker:
        assert keyless.control.ping(timeout=0.5) == []
        keyless.control.broadcast("shutdown")
        stranger.control.broadcast("pool_grow", {"n": 5})
        assert holder.control.ping() == [{"w1@ctl": {"ok": "pong"}}]
        assert worker.concurrency == 2 and not worker._stopping


def test_forged_revocations_and_rate_limits_are_ignored(apps: tuple[Celery, Celery, Celery]) -> None:
    holder, keyless, _ = apps
    with running(holder):
        task_id = "forged-revoke"
        # Keys written straight to the broker: an unsigned revocation and an unsigned rate limit.
        keyless.state.revoke([task_id], json.dumps({"terminate": False}).encode(), time.time() + 60)
        keyless.state.kv_put(RATE_LIMITS, "s.add", b"1/m")
        result = holder.tasks["s.add"].apply_async((1, 2), task_id=task_id)
        deadline = time.monotonic() + 10
        while result.state != states.SUCCESS and time.monotonic() < deadline:
            time.sleep(0.05)
        assert result.state == states.SUCCESS and result.get(timeout=1) == 3
        assert [holder.tasks["s.add"].delay(i, 0).get(timeout=10) for i in range(3)] == [0, 1, 2]
        assert holder.control.rate_limits() == {}
        signed = holder.tasks["s.sleep"].apply_async((5,), countdown=2)
        holder.control.revoke(signed.id)
        with pytest.raises(Exception, match="revoked"):
            signed.get(timeout=10)


def test_revocation_info_and_rate_limits_are_stored_sealed(apps: tuple[Celery, Celery, Celery]) -> None:
    holder, _, _ = apps
    holder.control.revoke("some-task")
    holder.control.rate_limit("s.add", "10/s")
    (info,) = holder.state.revoked(["some-task"]).values()
    assert info.startswith(b"\x00conveyor-signed")
    assert holder.state.kv_get(
        RATE_LIMITS,
        "s.add",
    ).startswith(b"\x00conveyor-signed")  # type: ignore[union-attr]
    assert holder.control.rate_limits() == {"s.add": "10/s"}


def test_a_raw_message_published_by_hand_is_refused(apps: tuple[Celery, Celery, Celery]) -> None:
    holder, keyless, _ = apps
    outgoing, result = keyless.producer.prepare("s.add", (5, 5))
    with running(holder):
        holder.broker.publish([Outgoing("celery", outgoing.body)])
        sealed, good = holder.producer.prepare("s.add", (6, 6))
        holder.broker.publish([sealed])
        assert good.get(timeout=10) == 12
        assert "bad signature: unsigned" in dead_letter_reasons(holder)
        assert result.state == states.PENDING  # never read, so never run


def test_a_periodic_task_written_without_the_key_is_not_scheduled(apps: tuple[Celery, Celery, Celery]) -> None:
    from conveyor.beat import ScheduleStore

    holder, keyless, _ = apps
    ScheduleStore(keyless).add("forged", "s.add", 1.0, args=(1, 1))
    ScheduleStore(holder).add("genuine", "s.add", 60.0, args=(2, 2))
    assert set(ScheduleStore(holder).entries()) == {"genuine"}
