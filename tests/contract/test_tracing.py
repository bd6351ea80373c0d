"""OpenTelemetry (conveyor.contrib.opentelemetry) with a real worker, and worker signals in every pool."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from conveyor import Celery, signals
from conveyor.contrib.opentelemetry import ConveyorInstrumentor
from tests.conftest import BROKERS, contract_app, store_url
from tests.contract.test_worker_contract import running


@pytest.fixture(params=BROKERS)
def app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Celery]:
    application = contract_app("traced", store_url(request.param, tmp_path))

    def tracer() -> trace.Tracer:
        return PROVIDER[0].get_tracer("tests")

    @application.task(name="tr.add")
    def add(x: int, y: int) -> int:
        with tracer().start_as_current_span("inner work"):
            return x + y

    @application.task(name="tr.fail")
    def fail() -> None:
        raise ValueError("bad input")

    @application.task(name="tr.async_add")
    async def async_add(x: int, y: int) -> int:
        with tracer().start_as_current_span("inner work"):
            return x + y

    yield application
    application.close()


#: The test's tracer provider, which the tasks' own spans ("inner work") use too.
PROVIDER: list[TracerProvider] = [TracerProvider()]


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    PROVIDER[0] = provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentor = ConveyorInstrumentor().instrument(tracer_provider=provider)
    yield exporter
    instrumentor.uninstrument()


def by_name(exporter: InMemorySpanExporter) -> dict[str, list[ReadableSpan]]:
    out: dict[str, list[ReadableSpan]] = {}
    for span in exporter.get_finished_spans():
        out.setdefault(span.name, []).append(span)
    return out


@pytest.mark.parametrize("pool", ["threads", "solo", "asyncio"])
def test_publish_and_run_are_one_trace(app: Celery, spans: InMemorySpanExporter, pool: str) -> None:
    with running(app, pool):
        assert app.tasks["tr.add"].delay(1, 2).get(timeout=10) == 3
        assert app.tasks["tr.async_add"].delay(2, 2).get(timeout=10) == 4
    found = by_name(spans)
    for name in ("tr.add", "tr.async_add"):
        [send] = found[f"send {name}"]
        [run] = found[f"run {name}"]
        assert send.kind == SpanKind.PRODUCER and run.kind == SpanKind.CONSUMER
        assert run.context.trace_id == send.context.trace_id
        assert run.parent is not None and run.parent.span_id == send.context.span_id
        assert run.attributes["conveyor.task.state"] == "SUCCESS"
        assert run.attributes["messaging.destination.name"] == "celery"
    inner = found["inner work"]
    runs = {span.context.span_id for name in ("tr.add", "tr.async_add") for span in found[f"run {name}"]}
    assert len(inner) == 2 and {span.parent.span_id for span in inner if span.parent} == runs


def test_a_failure_is_recorded_and_a_chain_stays_in_one_trace(app: Celery, spans: InMemorySpanExporter) -> None:
    with running(app, "threads"):
        failed = app.tasks["tr.fail"].delay()
        with pytest.raises(ValueError):
            failed.get(timeout=10)
        chained = (app.tasks["tr.add"].s(1, 1) | app.tasks["tr.add"].s(10)).apply_async()
        assert chained.get(timeout=10) == 12
    found = by_name(spans)
    [run_failed] = found["run tr.fail"]
    assert run_failed.status.status_code == StatusCode.ERROR and "bad input" in (run_failed.status.description or "")
    assert [event.name for event in run_failed.events] == ["exception"]
    first_send = next(s for s in found["send tr.add"] if s.parent is None)
    chain_spans = [s for s in spans.get_finished_spans() if s.context.trace_id == first_send.context.trace_id]
    assert sorted(s.name for s in chain_spans) == sorted(
        ["send tr.add", "run tr.add", "inner work", "send tr.add", "run tr.add", "inner work"]
    )


def test_worker_signals_in_every_pool(app: Celery, tmp_path: Path) -> None:
    """worker_ready/worker_shutdown in the worker; worker_process_init in each prefork child."""
    seen: list[str] = []
    children = tmp_path / "children"

    def ready(sender: Any, **_: Any) -> None:
        seen.append(f"ready {sender.hostname}")

    def shutdown(sender: Any, **_: Any) -> None:
        seen.append(f"shutdown {sender.hostname}")

    def child_init(sender: Any, **_: Any) -> None:
        with open(children, "a") as out:
            out.write(f"{os.getpid()}\n")

    for signal, receiver in ((signals.worker_ready, ready), (signals.worker_shutdown, shutdown),
                             (signals.worker_process_init, child_init)):  # fmt: skip
        signal.connect(receiver)
    try:
        with running(app, "prefork", concurrency=2):
            assert app.tasks["tr.add"].delay(1, 1).get(timeout=20) == 2
    finally:
        signals.worker_ready.disconnect(ready)
        signals.worker_shutdown.disconnect(shutdown)
        signals.worker_process_init.disconnect(child_init)
    assert seen == ["ready w1@test", "shutdown w1@test"]
    pids = set(children.read_text().split())
    assert len(pids) == 2 and str(os.getpid()) not in pids
