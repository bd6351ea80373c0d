"""The canvas — chain, group, chord — on every broker, through a real worker (Celery's API)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from conveyor import Celery, GroupResult, Signature, chain, chord, group, states
from conveyor.exceptions import ChordError
from tests.conftest import BROKERS, contract_app, store_url
from tests.contract.test_worker_contract import running

BODY_RUNS: list[str] = []


def make_app(store: tuple[str, dict[str, str]]) -> Celery:
    app = contract_app("canvas_tests", store)

    @app.task(name="c.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="c.total")
    def total(values: list[int]) -> int:
        return sum(values)

    @app.task(name="c.fail")
    def fail(x: int) -> None:
        raise ValueError(f"no {x}")

    @app.task(name="c.where", bind=True)
    def where(self: Any) -> list[Any]:
        return [self.request.group, self.request.group_index]

    @app.task(name="c.tally")
    def tally(values: list[int], key: str) -> int:
        BODY_RUNS.append(key)
        return len(values)

    return app


@pytest.fixture(params=BROKERS)
def app(request: pytest.FixtureRequest, tmp_path) -> Iterator[Celery]:  # type: ignore[no-untyped-def]
    application = make_app(store_url(request.param, tmp_path))
    yield application
    application.close()


def test_chain_passes_each_result_on(app: Celery) -> None:
    add = app.tasks["c.add"]
    with running(app, "threads"):
        result = (add.s(1, 1) | add.s(2) | add.s(3)).apply_async()
        assert result.get(timeout=20) == 7
        assert result.parent is not None and result.parent.get(timeout=20) == 4
        first = result.parent.parent
        assert first is not None and first.get(timeout=20) == 2
        assert chain(add.s(10, 0), add.si(1, 1)).apply_async().get(timeout=20) == 2  # immutable: own args


def test_group_is_published_in_one_broker_call_and_keeps_order(app: Celery, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    calls: list[int] = []
    publish = app.broker.publish
    monkeypatch.setattr(app.broker, "publish", lambda messages: (calls.append(len(messages)), publish(messages))[1])
    add = app.tasks["c.add"]
    with running(app, "threads"):
        result = group(add.s(i, i) for i in range(10)).apply_async()
        assert calls == [10]
        assert isinstance(result, GroupResult) and len(result) == 10
        assert result.get(timeout=20) == [2 * i for i in range(10)]
        assert result.ready() and result.successful() and result.completed_count() == 10
        where = group(app.tasks["c.where"].s() for _ in range(3)).apply_async()
        assert where.get(timeout=20) == [[where.id, 0], [where.id, 1], [where.id, 2]]
    later = group(add.s(1, 1).set(countdown=60) for _ in range(3)).apply_async()
    revokes: list[int] = []
    revoke = app.state.revoke
    monkeypatch.setattr(app.state, "revoke", lambda ids, *a: (revokes.append(len(ids)), revoke(ids, *a))[1])
    later.revoke()
    assert revokes == [3] and set(app.state.revoked([r.id for r in later])) == {r.id for r in later}


def test_group_arguments_are_checked_before_anything_is_sent(app: Celery) -> None:
    add = app.tasks["c.add"]
    with pytest.raises(TypeError, match="c.add"):
        group([add.s(1, 1), add.s(1)]).apply_async()
    with pytest.raises(TypeError, match="deduplication applies to single calls"):
        group([add.s(1, 1), add.s(2, 2).set(deduplication_id="k")]).apply_async()
    assert app.broker.queue_sizes(["celery"]) == {"celery": 0}


def test_chord_calls_the_body_with_every_result(app: Celery) -> None:
    add, total = app.tasks["c.add"], app.tasks["c.total"]
    with running(app, "threads"):
        result = chord(add.s(i, i) for i in range(5))(total.s())
        assert result.get(timeout=30) == 20
        assert isinstance(result.parent, GroupResult) and result.parent.get(timeout=5) == [0, 2, 4, 6, 8]


def test_the_last_header_task_to_end_sends_the_body_once(app: Celery, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """No polling: the worker that stores a chord's last header result sends the body (the unlock
    task, pushed out of reach here, is only the fallback); of 40 parts ending on four threads at
    once, and chains as parts, exactly one sends it."""
    from conveyor import canvas

    monkeypatch.setattr(canvas, "CHORD_FALLBACK_INTERVAL", 3600.0)
    add, tally = app.tasks["c.add"], app.tasks["c.tally"]
    key = uuid.uuid4().hex
    with running(app, "threads", concurrency=4):
        parts = [add.s(i, i) for i in range(30)] + [add.s(i, 0) | add.s(1) for i in range(10)]
        assert chord(parts, tally.s(key=key)).apply_async().get(timeout=30) == 40
        time.sleep(0.5)
    assert BODY_RUNS.count(key) == 1
    assert app.state.kv_items(canvas.CHORDS) == {}  # the record and its count are gone


def test_chord_with_a_failed_header_task_fails_its_body(app: Celery) -> None:
    add, total, fail = app.tasks["c.add"], app.tasks["c.total"], app.tasks["c.fail"]
    with running(app, "threads"):
        result = chord([add.s(1, 1), fail.s(7)], total.s()).apply_async()
        with pytest.raises(ChordError, match="raised ValueError"):
            result.get(timeout=30)
        assert result.state == states.FAILURE


def test_canvas_nests_as_in_celery(app: Celery) -> None:
    """S5.5 canvas, nested: a group inside a chain (followed by a step it becomes a chord), chains
    inside a group and inside a chord's header, a chord inside a chain, a chain as a chord's body."""
    add, total = app.tasks["c.add"], app.tasks["c.total"]
    with running(app, "threads"):
        # 1+1 = 2; the group's members each get 2 first: [3, 4]; total: 7
        assert chain(add.s(1, 1), group(add.s(1), add.s(2)), total.s()).apply_async().get(timeout=20) == 7
        # ending with a group: its GroupResult, each member fed the previous result
        assert (add.s(1, 1) | group(add.s(10), add.s(20))).apply_async().get(timeout=20) == [12, 22]
        assert group(add.s(1, 1) | add.s(1), add.s(2, 2) | add.s(2)).apply_async().get(timeout=20) == [3, 6]
        assert chord([add.s(1, 1) | add.s(1), add.s(5, 5)], total.s()).apply_async().get(timeout=20) == 13
        after_chord = chain(chord([add.s(1, 1), add.s(2, 2)], total.s()), add.s(100)).apply_async()
        assert after_chord.get(timeout=20) == 106
        assert after_chord.parent is not None and after_chord.parent.get(timeout=20) == 6
        assert chord([add.s(1, 1), add.s(2, 2)], total.s() | add.s(1)).apply_async().get(timeout=20) == 7


def test_nested_signatures_travel_as_dicts_and_come_back_whole(app: Celery) -> None:
    """A nested canvas embedded in a message (Celery's layout: parts in kwargs) is rebuilt as it was."""
    add, total = app.tasks["c.add"], app.tasks["c.total"]
    canvas = chain(add.s(1, 1), group(add.s(1), add.s(2) | add.s(3)), total.s())
    wire = json.loads(json.dumps(canvas))
    assert wire["subtask_type"] == "chain" and wire["kwargs"]["tasks"][1]["subtask_type"] == "chord"
    rebuilt = Signature.from_dict(wire, app)
    assert isinstance(rebuilt, chain) and repr(rebuilt) == repr(canvas)
    [first, upgraded] = rebuilt.tasks
    assert first.task == "c.add" and first.args == (1, 1)
    assert isinstance(upgraded, chord) and isinstance(upgraded.header.tasks[1], chain)


def test_canvas_runs_eagerly_when_always_eager(app: Celery) -> None:
    app.conf.task_always_eager = True
    add, total = app.tasks["c.add"], app.tasks["c.total"]
    assert (add.s(1, 2) | add.s(3)).apply_async().get() == 6
    assert group(add.s(i, 1) for i in range(3)).apply_async().get() == [1, 2, 3]
    assert chord([add.s(1, 1), add.s(2, 2)])(total.s()).get() == 6
