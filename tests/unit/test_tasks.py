"""Tasks and calling them (S5.1-S5.3)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from conveyor import Celery, states
from conveyor.messages import decode


@pytest.fixture
def memory_app() -> Celery:
    return Celery("tests", broker="memory://tasks-" + os.urandom(4).hex())


def test_registered_as_module_dot_function(memory_app: Celery) -> None:
    """S5.1: @app.task registers <module>.<function>."""

    @memory_app.task
    def add(x: int, y: int) -> int:
        return x + y

    assert add.name == "tests.unit.test_tasks.add"
    assert memory_app.tasks[add.name] is add
    assert add(1, 2) == 3  # calling the task runs it here


def test_named_and_bound_tasks(memory_app: Celery) -> None:
    @memory_app.task(name="custom.name", bind=True, max_retries=7)
    def bound(self, x: int) -> str:  # type: ignore[no-untyped-def]
        return f"{self.name}:{x}"

    assert bound.name == "custom.name" and bound.max_retries == 7
    assert bound(3) == "custom.name:3"


def test_unknown_task_option_is_an_error(memory_app: Celery) -> None:
    with pytest.raises(TypeError, match="unknown option 'max_retry'; did you mean 'max_retries'"):
        memory_app.task(max_retry=3)(lambda: None)


def test_delay_sends_a_message_to_the_routed_queue(memory_app: Celery) -> None:
    """S5.2: delay() returns an AsyncResult; the broker holds a protocol-2 message."""

    @memory_app.task
    def add(x: int, y: int) -> int:
        return x + y

    result = add.delay(1, 2)
    [delivery] = memory_app.broker.fetch(["celery"], 10, 0)
    message = decode(delivery.body)
    assert (message.task, message.id, message.args) == (add.name, result.id, (1, 2))
    assert result.state == states.PENDING


def test_apply_async_options(memory_app: Celery) -> None:
    """S5.3: every option of the tutorial's table reaches the message."""

    @memory_app.task
    def add(x: int, y: int) -> int:
        return x + y

    eta = datetime.now(UTC) + timedelta(hours=1)
    result = add.apply_async(
        args=(1,), kwargs={"y": 2}, task_id="my-id", eta=eta, expires=60, queue="q1", priority=0,
        serializer="msgpack", compression="zlib", shadow="adder", headers={"h": 1}, ignore_result=True,
        time_limit=10, soft_time_limit=5, link=add.s(10), link_error=add.si(0, 0),
    )  # fmt: skip
    assert result.id == "my-id"
    assert memory_app.broker.queue_sizes(["q1"]) == {"q1": 1}
    message = decode(_peek(memory_app, eta))
    assert message.content_type == "application/x-msgpack" and message.compression == "application/x-gzip"
    assert message.shadow == "adder" and message.headers == {"h": 1} and message.ignore_result
    assert message.eta == eta and message.expires is not None
    assert (message.time_limit, message.soft_time_limit) == (10, 5)
    assert message.callbacks == [dict(add.s(10))] and message.errbacks == [dict(add.si(0, 0))]
    assert result.get() is None  # ignore_result: get() returns None at once


def _peek(app: Celery, eta: datetime) -> bytes:
    # The message is delayed until eta: read it straight from the store.
    store = app.broker.store  # type: ignore[attr-defined]
    [record] = list(store.records.values())
    assert record.visible_at == pytest.approx(eta.timestamp())
    return record.body  # type: ignore[no-any-return]


def test_countdown_wins_over_eta(memory_app: Celery) -> None:
    @memory_app.task
    def noop() -> None:
        return None

    call = memory_app.producer.options({"eta": datetime(2000, 1, 1, tzinfo=UTC), "countdown": 30})
    message, _ = memory_app.producer.message(noop.name, call=call)
    assert message.eta is not None and message.eta > datetime.now(UTC)


def test_soft_limit_above_hard_limit_is_a_value_error(memory_app: Celery) -> None:
    @memory_app.task
    def noop() -> None:
        return None

    with pytest.raises(ValueError, match="soft_time_limit"):
        noop.apply_async(time_limit=5, soft_time_limit=10)


def test_arguments_that_do_not_fit_are_refused_at_call_time(memory_app: Celery) -> None:
    @memory_app.task
    def add(x: int, y: int) -> int:
        return x + y

    with pytest.raises(TypeError, match=r"\.add\(x: '?int'?, y: '?int'?\).*missing a required argument: 'y'"):
        add.delay(1)
    with pytest.raises(TypeError, match="unknown option 'countdwn'; did you mean 'countdown'"):
        add.apply_async((1, 2), countdwn=3)


def test_priority_out_of_range(memory_app: Celery) -> None:
    @memory_app.task
    def noop() -> None:
        return None

    with pytest.raises(ValueError, match="between 0"):
        noop.apply_async(priority=300)


def test_eager_mode_round_trips_arguments_and_behaves_like_a_result(memory_app: Celery) -> None:
    memory_app.conf.task_always_eager = True

    @memory_app.task
    def echo(value: object) -> object:
        return value

    @memory_app.task
    def fail() -> None:
        raise KeyError("nope")

    result = echo.delay((1, 2))
    assert result.get() == [1, 2]  # a tuple comes back as a JSON list, as from a worker
    assert result.successful() and result.state == states.SUCCESS
    failed = fail.delay()
    assert failed.failed() and isinstance(failed.result, KeyError)
    with pytest.raises(KeyError):
        failed.get()
    memory_app.conf.task_eager_propagates = True
    with pytest.raises(KeyError):
        fail.delay()
    assert memory_app.broker.queue_sizes() == {}


def test_delay_is_typed_with_paramspec(tmp_path: Path) -> None:
    """add.delay("x") is a mypy error when add takes ints; delay(1, 2) is AsyncResult[int], for
    `async def` tasks too (with and without options to @app.task)."""
    source = tmp_path / "typed_usage.py"
    source.write_text(
        textwrap.dedent(
            """
            import asyncio

            from conveyor import AsyncResult, Celery

            app = Celery("t")

            @app.task
            def add(x: int, y: int) -> int:
                return x + y

            ok: AsyncResult[int] = add.delay(1, 2)
            reveal_type(add.delay(1, 2))
            add.delay("x", 2)

            @app.task
            async def fetch(url: str) -> bytes:
                return b""

            @app.task(bind=True, max_retries=2)
            async def count(self: object, text: str) -> int:
                return len(text)

            reveal_type(fetch.delay("u"))
            reveal_type(count.delay("abc"))
            data: bytes = asyncio.run(fetch("u"))  # called directly: its coroutine
            count.delay(3)
            """
        )
    )
    run = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", "--cache-dir=/dev/null", str(source)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert 'Revealed type is "conveyor.result.AsyncResult[int]"' in run.stdout, run.stdout
    assert 'Argument 1 to "delay" of "Task" has incompatible type "str"; expected "int"' in run.stdout, run.stdout
    assert 'Revealed type is "conveyor.result.AsyncResult[bytes]"' in run.stdout, run.stdout
    assert run.stdout.count('Revealed type is "conveyor.result.AsyncResult[int]"') == 2, run.stdout
    assert 'Argument 1 to "delay" of "Task" has incompatible type "int"; expected "str"' in run.stdout, run.stdout
    assert run.stdout.count("error:") == 2, run.stdout


def test_missing_queues_can_be_refused(memory_app: Celery) -> None:
    from conveyor import Queue
    from conveyor.exceptions import ImproperlyConfigured

    @memory_app.task
    def noop() -> None:
        return None

    memory_app.conf.task_queues = [Queue("known")]
    noop.apply_async(queue="adhoc")  # allowed by default, as in Celery
    memory_app.conf.task_create_missing_queues = False
    noop.apply_async(queue="known")
    with pytest.raises(ImproperlyConfigured, match="queue 'adhoc' is not in task_queues"):
        noop.apply_async(queue="adhoc")


def test_arguments_that_cannot_be_serialized_raise_encode_error_naming_the_task(memory_app: Celery) -> None:
    """Bad input (S5.3 serializer): Celery's EncodeError, naming the task and the serializer; nothing sent."""
    from conveyor.exceptions import EncodeError

    task = memory_app.task(name="t.takes_anything")(lambda x: x)
    with pytest.raises(EncodeError, match=r"t\.takes_anything\[.*\] with json: .*not JSON serializable"):
        task.delay(object())
    assert memory_app.broker.queue_sizes(["celery"]) == {"celery": 0}


def test_the_argument_count_shortcut_agrees_with_signature_bind(memory_app: Celery) -> None:
    """`add.delay(1, 2)` is checked by counting; every other call by inspect's bind: both say the same."""
    import inspect

    def a(x, y): ...  # type: ignore[no-untyped-def]
    def b(x, y=1, *rest): ...  # type: ignore[no-untyped-def]
    def c(x, /, y=2): ...  # type: ignore[no-untyped-def]
    def d(x, *, key): ...  # type: ignore[no-untyped-def]
    def e(*args, **kwargs): ...  # type: ignore[no-untyped-def]
    def f(): ...  # type: ignore[no-untyped-def]
    def g(self, x): ...  # type: ignore[no-untyped-def]
    def h(*, self): ...  # type: ignore[no-untyped-def]

    for index, (function, bind) in enumerate(
        [(a, False), (b, False), (c, False), (d, False), (e, False), (f, False), (g, True), (f, True), (h, True)]
    ):
        task = memory_app.task(name=f"shortcut.{index}", bind=bind)(function)
        for count in range(5):
            arguments = tuple(range(count))
            try:
                inspect.signature(function).bind(*((None, *arguments) if bind else arguments))
                fits = True
            except TypeError:
                fits = False
            if fits:
                task.check_arguments(arguments, {})
            else:
                with pytest.raises(TypeError, match=f"shortcut.{index}"):
                    task.check_arguments(arguments, {})


def test_retry_in_a_directly_called_task_raises_as_celery_does() -> None:
    from conveyor.exceptions import Retry

    app = Celery("direct", broker="memory://direct-retry")

    @app.task(bind=True)
    def flaky(self, fail_with: Exception | None) -> None:  # type: ignore[no-untyped-def]
        raise self.retry(exc=fail_with)

    with pytest.raises(Retry):
        flaky(None)
    with pytest.raises(KeyError):
        flaky(KeyError("given"))
    app.close()
