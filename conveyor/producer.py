"""The producer: every message an app sends goes through here.

Tasks (`delay`, `apply_async`), `send_task`, the canvas, beat and the worker's
callbacks all send through `app.producer`: deduplicate, build the message
(`messages.build_message`), route it, encode it, sign it, publish it (retried
on connection errors per the call's policy), and tell the publish signals.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from conveyor import dedup, messages, signals
from conveyor.brokers.base import Outgoing
from conveyor.calls import CallOptions
from conveyor.exceptions import BrokerConnectionError, ConveyorError, EncodeError, ImproperlyConfigured
from conveyor.execution import short_repr
from conveyor.result import AsyncResult
from conveyor.task import current_request

if TYPE_CHECKING:
    from conveyor.app import Conveyor
    from conveyor.task import Task

logger = logging.getLogger("conveyor")


class Producer:
    """Sends the messages of one app."""

    def __init__(self, app: Conveyor) -> None:
        self.app = app

    def options(self, options: Mapping[str, Any], task: Task[Any, Any] | None = None) -> CallOptions:
        """A call's options resolved over the task's attributes and the app's configuration."""
        return CallOptions.resolve(self.app.conf, options, task)

    def send(
        self, name: str, args: Sequence[Any] | None, kwargs: Mapping[str, Any] | None, call: CallOptions
    ) -> AsyncResult[Any]:
        """Send one call of task `name`; a handle on its result. With a deduplication id whose
        earlier task is still pending, nothing is sent and the handle is that task's."""
        app = self.app
        dedup_header: dict[str, Any] = {}
        if call.deduplication_id is not None:
            call.task_id = call.task_id or messages.new_id()
            holder, dedup_header = dedup.claim(app, call.deduplication_id, call.task_id, call.deduplication_ttl)
            if holder is not None:  # a task with this key is pending: that one is the result
                return AsyncResult(holder, app, task_name=name)
            call.headers[dedup.HEADER] = dedup_header
        try:
            outgoing, result = self.prepare(name, args, kwargs, call)
            self.publish([outgoing], call)
        except BaseException:
            if dedup_header:
                dedup.release(app, dedup_header)  # nothing was sent: the key is free again
            raise
        return result

    def message(
        self,
        name: str,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        call: CallOptions | None = None,
    ) -> tuple[messages.Message, str]:
        """The message for one call (with the default options when `call` is None) and the
        queue it is routed to."""
        app = self.app
        if call is None:
            call = self.options({})
        parent = current_request()
        message_id = call.task_id or messages.new_id()
        if parent is not None:
            parent.children.append(message_id)
            message = messages.build_message(
                name, args, kwargs, call, message_id=message_id, parent_id=parent.id, root_id=parent.root_id,
                reply_to=parent.reply_to or app.backend.reply_to(),
            )  # fmt: skip
        else:
            message = messages.build_message(
                name, args, kwargs, call, message_id=message_id, reply_to=app.backend.reply_to()
            )
        queue = app.router.route(
            name, message.args, message.kwargs, queue=call.queue, exchange=call.exchange,
            routing_key=call.routing_key, task_queue=call.task_queue,
        )  # fmt: skip
        return message, self._known(queue)

    def prepare(
        self,
        name: str,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        call: CallOptions | None = None,
    ) -> tuple[Outgoing, AsyncResult[Any]]:
        """The encoded (and signed) message for one call, ready to publish, and its result handle:
        `send` publishes one; a group publishes many in one broker call."""
        app = self.app
        if call is None:
            call = self.options({})
        message, queue = self.message(name, args, kwargs, call)
        if signals.before_task_publish.receivers:
            before_publish(message, queue)
        try:
            body = message.encode(call.serializer, call.compression, app.conf.task_message_format)
        except ConveyorError:
            raise
        except (TypeError, ValueError, OverflowError) as exc:
            raise EncodeError(
                f"cannot serialize the arguments of {name}[{message.id}] with {call.serializer}: {exc}"
            ) from exc
        signing = app.signing
        if signing is not None:
            body = signing.seal(body)
        outgoing = Outgoing(queue, body, message.priority, message.eta.timestamp() if message.eta else None, message)
        return outgoing, AsyncResult(message.id, app, task_name=name, ignored=message.ignore_result)

    def publish(self, outgoing: Sequence[Outgoing], call: CallOptions) -> None:
        """Publish; on connection errors retry per the call's policy, then raise BrokerConnectionError."""
        broker = self.app.broker
        policy = call.retry_policy
        max_retries = policy.get("max_retries", 3)
        interval = float(policy.get("interval_start", 0))
        attempt = 0
        while True:
            try:
                broker.publish(outgoing)
                break
            except BrokerConnectionError as exc:
                if not call.retry or (max_retries is not None and attempt >= max_retries):
                    raise BrokerConnectionError(
                        f"cannot publish to {broker.display_url} after {attempt + 1} attempt(s): {exc}"
                    ) from exc
                time.sleep(min(interval, float(policy.get("interval_max", 1))))
                interval += float(policy.get("interval_step", 0.2))
                attempt += 1
        if self.app.conf.task_send_sent_event:
            self._record_sent(outgoing)
        if signals.after_task_publish.receivers:
            for sent in outgoing:
                if sent.message is not None:
                    m = sent.message
                    headers = {**m.headers, "id": m.id, "task": m.task}
                    signals.after_task_publish.send(m.task, headers=headers, routing_key=sent.queue)

    def _record_sent(self, outgoing: Sequence[Outgoing]) -> None:
        """Celery's task-sent events (`task_send_sent_event`), for the dashboard: best effort."""
        now, events = time.time(), []
        for sent in outgoing:
            m = sent.message
            if m is not None:
                events.append(orjson.dumps({
                    "type": "task-sent", "uuid": m.id, "name": m.task, "timestamp": now, "args": short_repr(m.args),
                    "kwargs": short_repr(m.kwargs), "retries": m.retries, "queue": sent.queue, "exchange": "",
                    "routing_key": sent.queue, "root_id": m.root_id, "parent_id": m.parent_id,
                    "eta": m.eta.isoformat() if m.eta else None,
                    "expires": m.expires.isoformat() if m.expires else None,
                }, default=repr))  # fmt: skip
        try:
            self.app.state.add_events(events)
        except ConveyorError as exc:
            logger.warning("Could not record task-sent events: %s", exc)

    def _known(self, queue: str) -> str:
        """With task_create_missing_queues off, only queues in task_queues (or the default) are allowed."""
        conf = self.app.conf
        if not conf.task_create_missing_queues and conf.task_queues:
            known = {q.name for q in conf.task_queues} | {conf.task_default_queue}
            if queue not in known:
                raise ImproperlyConfigured(
                    f"queue {queue!r} is not in task_queues ({', '.join(sorted(known))}) "
                    "and task_create_missing_queues is off"
                )
        return queue


def before_publish(message: messages.Message, queue: str) -> None:
    """`before_task_publish` with Celery's shapes: protocol 2 headers (`task`, `id`, ...) and a
    body of `(args, kwargs, embed)`; headers a receiver adds travel with the message."""
    m = message
    headers: dict[str, Any] = {
        **m.headers, "lang": "py", "task": m.task, "id": m.id, "shadow": m.shadow, "eta": m.eta,
        "expires": m.expires, "group": m.group, "retries": m.retries, "root_id": m.root_id,
        "parent_id": m.parent_id, "timelimit": [m.time_limit, m.soft_time_limit], "origin": m.origin,
    }  # fmt: skip
    known = set(headers) - set(m.headers)
    embed = {"callbacks": m.callbacks, "errbacks": m.errbacks, "chain": m.chain, "chord": m.chord}
    signals.before_task_publish.send(
        m.task, headers=headers, routing_key=queue, body=(m.args, m.kwargs, embed), exchange="",
        properties={"correlation_id": m.id, "priority": m.priority, "reply_to": m.reply_to},
        declare=[], retry_policy=None,
    )  # fmt: skip
    m.headers.update({key: value for key, value in headers.items() if key not in known})
