"""OpenTelemetry tracing: a span for every publish and every run, in one trace.

    from conveyor.contrib.opentelemetry import ConveyorInstrumentor

    ConveyorInstrumentor().instrument()   # in producers and in workers (e.g. in the app module)

Needs the `otel` extra (`opentelemetry-api`); spans go wherever the
configured tracer provider sends them. Publishing makes a PRODUCER span
`send <task>` and puts its context into the message headers (W3C
`traceparent`, or whatever propagator is configured); the worker continues
that trace with a CONSUMER span `run <task>`, current while the task runs, so
spans the task makes (an HTTP call, a query) are its children, and a step a
task sends (a chain's next step, a callback) is too. A failure is recorded
on the span with the exception and an ERROR status. Built on
`conveyor.signals`, so it works in every pool (prefork children included)
and in eager mode.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import context, propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from conveyor import __version__, signals, states


class ConveyorInstrumentor:
    """Connects tracing to Conveyor's signals; `uninstrument()` disconnects it."""

    def __init__(self) -> None:
        self._tracer: trace.Tracer | None = None
        # Runs in flight: task id -> (span, context token). Pool threads, event-loop tasks and
        # prefork children each touch only their own entries.
        self._running: dict[str, tuple[trace.Span, object]] = {}

    def instrument(self, tracer_provider: trace.TracerProvider | None = None) -> ConveyorInstrumentor:
        self._tracer = trace.get_tracer("conveyor", __version__, tracer_provider=tracer_provider)
        signals.before_task_publish.connect(self._before_publish)
        signals.task_prerun.connect(self._prerun)
        signals.task_postrun.connect(self._postrun)
        return self

    def uninstrument(self) -> None:
        signals.before_task_publish.disconnect(self._before_publish)
        signals.task_prerun.disconnect(self._prerun)
        signals.task_postrun.disconnect(self._postrun)

    def _before_publish(self, sender: str, headers: dict[str, Any], routing_key: str, **_: Any) -> None:
        assert self._tracer is not None
        attributes = {"messaging.system": "conveyor", "messaging.operation": "publish",
                      "messaging.destination.name": routing_key, "conveyor.task.name": sender}  # fmt: skip
        # The span covers the making of the message: it ends before the broker round trip,
        # so a publish that fails and is retried leaves no span open.
        with self._tracer.start_as_current_span(f"send {sender}", kind=SpanKind.PRODUCER, attributes=attributes):
            propagate.inject(headers)

    def _prerun(self, sender: Any, task_id: str, task: Any, **_: Any) -> None:
        assert self._tracer is not None
        request = task.request
        parent = propagate.extract(request.headers or {})
        attributes = {"messaging.system": "conveyor", "messaging.operation": "process",
                      "messaging.message.id": task_id, "conveyor.task.name": task.name,
                      "conveyor.task.retries": request.retries or 0,
                      "messaging.destination.name": (request.delivery_info or {}).get("routing_key") or ""}  # fmt: skip
        span = self._tracer.start_span(
            f"run {task.name}", context=parent, kind=SpanKind.CONSUMER, attributes=attributes
        )
        token = context.attach(trace.set_span_in_context(span))
        self._running[task_id] = (span, token)

    def _postrun(self, sender: Any, task_id: str, retval: Any, state: str, **_: Any) -> None:
        entry = self._running.pop(task_id, None)
        if entry is None:
            return
        span, token = entry
        span.set_attribute("conveyor.task.state", state)
        if state == states.FAILURE and isinstance(retval, BaseException):
            span.record_exception(retval)
            span.set_status(Status(StatusCode.ERROR, f"{type(retval).__name__}: {retval}"))
        span.end()
        context.detach(token)  # type: ignore[arg-type]
