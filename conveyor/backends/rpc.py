"""The rpc result backend (`rpc://`): states travel back to the caller as RabbitMQ messages.

As in Celery, nothing is stored: each process that sends tasks has a reply
queue of its own (`conveyor.reply.<id>`, prefixed like the broker's queues),
every task message it sends names that queue in `reply_to`, and a worker
publishes each state of the task there (correlation id: the task id). The
caller's connection consumes the queue into memory, where `get()` waits for
the state to turn ready: woken by the arrival, never polling.

What follows from that, as in Celery:

- only the process that sent a task sees its state (others see PENDING), and
  a state arrives once: it is kept in that process's memory until `forget()`;
- tasks sent from a running task report to the same caller (a chain's last
  result reaches whoever sent the chain);
- chords cannot use it (their unlock runs on a worker, which never sees the
  group's results); there is no history, so no scoreboard;
- results live as long as the reply queue: RabbitMQ deletes a queue that has
  had no consumer for `reply_queue_expires` seconds (transport option,
  default 600), so a caller that reconnects within that finds its results.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from conveyor import exceptions, states
from conveyor.backends.base import ResultBackend, StateUpdate
from conveyor.exceptions import ImproperlyConfigured

DEFAULT_REPLY_QUEUE_EXPIRES = 600.0


class RPCBackend(ResultBackend):
    shared = False

    def __init__(
        self, url: str, options: Mapping[str, Any] | None = None, *, broker: Any = None, **kwargs: Any
    ) -> None:
        super().__init__(url, options, **kwargs)
        from conveyor.brokers.amqp import AMQPTransport

        if not isinstance(broker, AMQPTransport):
            raise ImproperlyConfigured(
                f"result_backend {url!r} sends results through RabbitMQ: it needs an amqp:// broker, not {broker!r}"
            )
        self.broker = broker
        self.expires_ms = int(float(self.options.get("reply_queue_expires", DEFAULT_REPLY_QUEUE_EXPIRES)) * 1000)
        self._queue = f"{broker.prefix}conveyor.reply.{uuid.uuid4().hex}"
        self._metas: dict[str, bytes] = {}  # task id -> its latest meta received here
        self._states: dict[str, str] = {}  # task id -> the state of that meta
        self._arrived = threading.Condition()
        self._listening = False

    def reply_to(self) -> str:
        self._listen()  # the queue exists before any task names it
        return self._queue

    def _listen(self) -> None:
        """Declare the reply queue and consume it (again, after a lost connection)."""
        if not self._listening or not self.broker.replies_consumed(self._queue):
            self.broker.consume_replies(self._queue, self.expires_ms, self._received)
            self._listening = True

    def _received(self, task_id: str, meta: bytes, state: str) -> None:
        """Called on the broker's loop for each state that arrives."""
        if not state:  # sent by a Celery worker: the state is only in the meta
            try:
                state = str(self.decode(meta).get("status", ""))
            except Exception:  # not a result record: nothing to wait for in it
                return
        with self._arrived:
            if self._states.get(task_id) == states.SUCCESS:
                return  # a late duplicate never replaces a success
            self._metas[task_id] = meta
            self._states[task_id] = state
            self._arrived.notify_all()

    def write(self, updates: Sequence[StateUpdate]) -> None:
        replies = [(u.reply_to, u.task_id, u.meta, u.state) for u in updates if u.reply_to]
        if replies:
            self.broker.send_replies(replies, self.serializer.content_type)

    def read(self, task_ids: Sequence[str]) -> dict[str, bytes]:
        if self._listening:
            self._listen()  # consuming again after a lost connection (else states stop arriving)
        with self._arrived:
            return {t: self._metas[t] for t in task_ids if t in self._metas}

    def read_history(self, task_id: str) -> list[bytes]:
        return []

    def delete(self, task_ids: Sequence[str]) -> None:
        with self._arrived:
            for task_id in task_ids:
                self._metas.pop(task_id, None)
                self._states.pop(task_id, None)

    def wait_for(self, task_id: str, timeout: float | None = None) -> dict[str, Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self._listen()
            with self._arrived:
                if self._states.get(task_id) in states.READY_STATES:
                    break
                remaining = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
                if remaining <= 0:
                    raise exceptions.TimeoutError(f"task {task_id} was not ready within {timeout} seconds")
                self._arrived.wait(remaining)  # at most a second: then check the consumer still runs
        return self.get_meta(task_id)

    def close(self) -> None:
        self._listening = False
