"""The prefork pool on its own, with real child processes: jobs and reports cross the pipes in
batches while tasks are short, one job per child while they are long, and a child's death or
time limit loses none of the jobs it held."""

from __future__ import annotations

import itertools
import os
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from conveyor import Celery
from conveyor.execution import Job
from conveyor.worker.pools import Finished, Lost, PoolEvent, Started
from conveyor.worker.prefork import PreforkPool


@pytest.fixture
def app() -> Iterator[Celery]:
    app = Celery("prefork-pool", broker=f"memory://prefork-{uuid.uuid4().hex}")

    @app.task(name="p.echo")
    def echo(i: int) -> int:
        return i

    @app.task(name="p.sleep")
    def sleep(seconds: float) -> int:
        time.sleep(seconds)
        return os.getpid()

    @app.task(name="p.die")
    def die() -> None:
        os._exit(1)

    @app.task(name="p.hang", time_limit=0.5)
    def hang() -> None:
        time.sleep(30)

    yield app
    app.close()


class Pool:
    """A started PreforkPool, the events it reports, and what crossed its pipes."""

    def __init__(self, app: Celery, concurrency: int = 2) -> None:
        self.app = app
        self.pool = PreforkPool(app, concurrency)
        self.events: list[PoolEvent] = []
        self.messages = 0
        self.most_held = 0
        self._ids = itertools.count(1)
        self._changed = threading.Condition()
        receive = self.pool._receive_one

        def counted(child: Any, emit: Any) -> bool:
            self.messages += 1
            self.most_held = max(self.most_held, *(len(c.jobs) for c in self.pool._children))
            return receive(child, emit)

        self.pool._receive_one = counted  # type: ignore[method-assign]
        self.pool.start(self._emit)

    def _emit(self, event: PoolEvent) -> None:
        with self._changed:
            self.events.append(event)
            self._changed.notify_all()

    def submit(self, name: str, *args: Any) -> int:
        job = Job(next(self._ids), self.app.producer.message(name, args)[0], "celery", "w@test")
        self.pool.submit(job)
        return job.id

    def ended(self, job_ids: list[int], timeout: float = 30) -> dict[int, PoolEvent]:
        """The Finished or Lost event of each job, once all are in."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                ends = {
                    e.outcome.job_id if isinstance(e, Finished) else e.job_id: e
                    for e in self.events
                    if isinstance(e, Finished | Lost)
                }
                if all(i in ends for i in job_ids):
                    return {i: ends[i] for i in job_ids}
                assert time.monotonic() < deadline, f"{len(set(job_ids) - set(ends))} jobs never ended"
                self._changed.wait(0.1)

    def close(self) -> None:
        self.pool.shutdown()
        self.pool.join(10)


@pytest.fixture
def pool(app: Celery) -> Iterator[Pool]:
    started = Pool(app)
    yield started
    started.close()


def test_short_tasks_cross_the_pipes_in_batches_and_each_ends_once(pool: Pool) -> None:
    pool.ended([pool.submit("p.echo", i) for i in range(20)])  # the pace is known: tasks are short
    before = pool.messages
    jobs = [pool.submit("p.echo", i) for i in range(400)]
    ends = pool.ended(jobs)
    assert [e.outcome.state for e in ends.values()] == ["SUCCESS"] * 400  # type: ignore[union-attr]
    finished = [e.outcome.job_id for e in pool.events if isinstance(e, Finished)]
    assert len(finished) == len(set(finished)) == 420
    started = {e.job_id for e in pool.events if isinstance(e, Started)}
    assert set(jobs) <= started  # every task's start reported, though it went with another's end
    assert pool.most_held > 1  # children held jobs ahead of the one they ran
    assert pool.messages - before <= 1.5 * len(jobs)  # mostly one message per task, not a start and an end


def test_long_tasks_go_to_children_one_at_a_time(pool: Pool) -> None:
    pool.ended([pool.submit("p.sleep", 0.1) for _ in range(2)])
    pids = pool.ended([pool.submit("p.sleep", 0.1) for _ in range(8)])
    assert pool.most_held == 1
    assert len({e.outcome.summary for e in pids.values()}) == 2  # type: ignore[union-attr]


def test_a_child_that_dies_loses_only_its_running_task(pool: Pool) -> None:
    pool.ended([pool.submit("p.echo", i) for i in range(20)])
    before = [pool.submit("p.echo", i) for i in range(50)]
    dying = pool.submit("p.die")
    after = [pool.submit("p.echo", i) for i in range(50)]
    ends = pool.ended([*before, dying, *after])
    assert isinstance(ends.pop(dying), Lost)
    assert all(isinstance(e, Finished) and e.outcome.state == "SUCCESS" for e in ends.values())


def test_a_task_past_its_hard_limit_ends_and_the_jobs_behind_it_run(pool: Pool) -> None:
    pool.ended([pool.submit("p.echo", i) for i in range(20)])
    hung = pool.submit("p.hang")
    behind = [pool.submit("p.echo", i) for i in range(30)]
    ends = pool.ended([hung, *behind])
    failed = ends.pop(hung)
    assert isinstance(failed, Finished) and "TimeLimitExceeded" in failed.outcome.summary
    assert all(isinstance(e, Finished) and e.outcome.state == "SUCCESS" for e in ends.values())


def test_fair_children_hold_one_job_each(app: Celery) -> None:
    app.conf.worker_prefork_ahead = False  # -O fair
    pool = Pool(app)
    try:
        pool.ended([pool.submit("p.echo", i) for i in range(200)])
        assert pool.most_held == 1
    finally:
        pool.close()


def test_the_pool_shrinks_while_busy_and_loses_nothing(pool: Pool) -> None:
    """A child that holds jobs ahead leaves once it has run them, not once the backlog is done."""
    pool.ended([pool.submit("p.echo", i) for i in range(20)])
    jobs = [pool.submit("p.echo", i) for i in range(3000)]
    pool.pool.resize(1)
    deadline = time.monotonic() + 10
    while len(pool.pool.processes()) > 1 and time.monotonic() < deadline:
        time.sleep(0.001)
    with pool._changed:
        ended_by_then = sum(isinstance(e, Finished) for e in pool.events) - 20
    assert len(pool.pool.processes()) == 1 and ended_by_then < len(jobs)
    ends = pool.ended(jobs)
    assert all(isinstance(e, Finished) and e.outcome.state == "SUCCESS" for e in ends.values())
