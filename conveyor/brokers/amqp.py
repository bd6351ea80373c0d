"""The RabbitMQ transport (AMQP 0-9-1): messages live in RabbitMQ, shared state beside it.

Each Conveyor queue is a durable RabbitMQ queue of the same name (after the
transport option `global_keyprefix`), declared with `x-max-priority` so that
RabbitMQ itself hands out the highest priority first. Messages are persistent
and published with publisher confirms. A single `delay()` sends its message
and returns; its confirm is awaited before anything acts on it
(`Transport.confirm()`: `AsyncResult.get()`, a task's end in the worker, any
other call of this broker on the same thread, the thread's end), as on Redis.
A connection lost first makes the unconfirmed ones go again; a negative
confirm is raised there. `confirm_publish: True` waits for each confirm in
`delay()` itself; `False` publishes without confirms, as Celery does.

- **Leases.** A delivery belongs to the consumer's channel until acked.
  RabbitMQ gives it back when that connection closes (a worker killed, its
  heartbeat missed), not on a timer: a live worker's task is never taken from
  it however long it runs, and a dead one's deliveries return at once.
  Fencing: a delivery remembers the connection it came on; once that
  connection is gone, acking or renewing it does nothing (`renew` reports it
  lost), because RabbitMQ has already given it to someone else.
- **Delays** wait in RabbitMQ, not in a worker. A message due in `d` ms walks
  a fixed ladder of 32 TTL queues, `conveyor.delay.31` down to
  `conveyor.delay.0`: queue `k` holds a message for 2**k ms and dead-letters it
  on to the next rung. The routing key spells `d` in binary, one word a rung,
  so a message stops only at the rungs of its one bits and arrives at its
  queue through the exchange `conveyor.delayed` after exactly `d` ms. One
  ladder per virtual host serves every queue and every app.
- **Attempts.** RabbitMQ tells only whether a delivery was given out before;
  a message Conveyor gives back itself is published again with its attempt
  count in the header `x-conveyor-attempts`.
- **Shared state** (revocations, rate-limit buckets, the key-value namespaces
  of beat and deduplication, the worker registry, monitoring events) needs
  compare-and-set and expiry, which AMQP does not offer. It lives in the state
  store of the transport option `state_url` (a Redis or SQLite URL); by
  default the app's result backend when that is Redis or SQLite, else
  `sqlite:///conveyor-state.db`.

Every AMQP call runs on one asyncio loop in a thread of its own (one
connection per transport object, per process): other threads hand it
coroutines, so channels are never shared between threads.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import heapq
import itertools
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from conveyor.brokers.amqp_management import ManagementAPI, default_url, vhost_of
from conveyor.brokers.base import MAX_PRIORITY, DeadLetter, Delivery, Outgoing, Transport
from conveyor.brokers.state import StateStore
from conveyor.exceptions import BrokerConnectionError, BrokerError, ImproperlyConfigured
from conveyor.pipelining import Pipelined, Window

logger = logging.getLogger("conveyor.broker")
if logging.getLogger("aiormq").level == logging.NOTSET:
    # aiormq logs a lost connection with a traceback on every reader and channel; the worker
    # says it once in its own words ("Cannot fetch from broker ...", "reachable again").
    logging.getLogger("aiormq").setLevel(logging.CRITICAL)

T = TypeVar("T")

#: Rungs of the delay ladder: RabbitMQ's longest TTL is 2**32 - 1 ms, so a delay of up to
#: 49 days walks it once; a message that arrives before its eta is sent round again by the worker.
DELAY_LEVELS = 32
DELAY_EXCHANGE = "conveyor.delayed"
ATTEMPTS_HEADER = "x-conveyor-attempts"
#: A reply's task state, so the caller need not decode the meta to know it.
STATE_HEADER = "x-conveyor-state"
#: Dead letters kept (older ones are dropped), as on the other brokers.
DEAD_LETTERS_KEPT = 20_000
DEFAULT_STATE_URL = "sqlite:///conveyor-state.db"
#: A fetch asked for what is there now (timeout 0) waits this long at most for it to arrive.
SETTLE_SECONDS = 1.0
_Send = tuple[str, bytes, int, int, int]


#: Stores that can keep the shared state: every broker but this one.
STATE_SCHEMES = ("redis", "rediss", "unix", "sentinel", "redis+cluster", "rediss+cluster", "sqlite", "memory")


def with_state_defaults(
    options: Mapping[str, Any], result_backend: str | None, backend_options: Mapping[str, Any] | None
) -> dict[str, Any]:
    """Transport options with `state_url` filled in: the result backend's store when it can
    keep the state (Redis, SQLite), else the SQLite file `conveyor-state.db`."""
    options = dict(options)
    if not options.get("state_url"):
        if result_backend and urlsplit(result_backend).scheme in STATE_SCHEMES:
            options["state_url"] = result_backend
            options.setdefault("state_transport_options", dict(backend_options or {}))
        else:
            options["state_url"] = DEFAULT_STATE_URL
    return options


def connection_url(url: str) -> str:
    """A Celery-style AMQP URL (`amqp://`, `pyamqp://guest@localhost//`) as aiormq takes it."""
    parts = urlsplit(url)
    scheme = "amqps" if parts.scheme == "amqps" else "amqp"
    user = parts.username or "guest"
    password = parts.password if parts.password is not None else ("guest" if user == "guest" else "")
    host = parts.hostname or "localhost"
    port = f":{parts.port}" if parts.port else ""
    path = parts.path if parts.path not in ("", "/") else "//"
    return urlunsplit((scheme, f"{user}:{password}@{host}{port}", path, parts.query, ""))


def celery_envelope(body: bytes, properties: Any, headers: Mapping[str, Any]) -> bytes:
    """A message Celery sent (protocol 2: task headers and properties in the AMQP frame, the
    body alone) as the JSON envelope Conveyor reads (kombu's layout), so a Conveyor worker runs it."""
    envelope = {
        "body": base64.b64encode(body).decode(),
        "content-type": properties.content_type or "application/json",
        "content-encoding": properties.content_encoding or "utf-8",
        "headers": dict(headers),
        "properties": {
            "correlation_id": properties.correlation_id,
            "reply_to": properties.reply_to,
            "delivery_mode": properties.delivery_mode,
            "body_encoding": "base64",
        },
    }
    return json.dumps(envelope, default=str).encode()


#: Largest headers put in an AMQP frame (RabbitMQ's frames are 128 KiB by default).
MAX_FRAME_HEADERS = 64 * 1024


def celery_frame(data: bytes) -> tuple[bytes, dict[str, Any]] | None:
    """A message in Celery's format (kombu's JSON envelope, `task_message_format="celery"`) as
    Celery sends it over AMQP: the body alone, the task headers and properties in the frame.
    None for anything else (Conveyor's compact envelope, bytes that are no envelope, headers
    that no AMQP frame can carry)."""
    if data[:1] != b"{":
        return None
    from pamqp import encode

    try:
        envelope = json.loads(data)
        headers, properties = envelope["headers"], envelope.get("properties") or {}
        body = envelope.get("body", "")
        body = base64.b64decode(body) if properties.get("body_encoding") == "base64" else str(body).encode()
        if not isinstance(headers, dict) or "task" not in headers or "id" not in headers:
            return None
        # Headers an AMQP frame cannot carry (nested too deep, integers too large, larger than a
        # frame): the envelope goes as it is, and the worker that reads it says what is wrong.
        if len(encode.field_table(headers)) > MAX_FRAME_HEADERS:
            return None
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError, OverflowError):
        return None
    fields = {
        "headers": headers,
        "content_type": envelope.get("content-type") or "application/json",
        "content_encoding": envelope.get("content-encoding") or "utf-8",
        "correlation_id": properties.get("correlation_id"),
        "reply_to": properties.get("reply_to"),
    }
    text = (fields["content_type"], fields["content_encoding"])
    if not all(isinstance(v, str) for v in text) or not all(
        v is None or isinstance(v, str) for v in (fields["correlation_id"], fields["reply_to"])
    ):
        return None  # properties no frame can carry: the envelope goes as it is
    return body, fields


def delay_ladder_key(delay_ms: int, queue: str) -> str:
    """The routing key that walks the ladder for `delay_ms` and ends at `queue`."""
    bits = format(delay_ms, f"0{DELAY_LEVELS}b")
    return ".".join(bits) + "." + queue


def _rung(level: int) -> str:
    return f"conveyor.delay.{level}"


class AMQPTransport(Transport):
    leases_lapse = False
    exact_priority_across_queues = False
    sizes_count_delayed = False

    def __init__(self, url: str, options: Mapping[str, Any] | None, state: StateStore) -> None:
        """`state` is the store that keeps what RabbitMQ cannot (see `state_url`)."""
        super().__init__(url, options)
        self.prefix = str(self.options.get("global_keyprefix", ""))
        self.max_priority = int(self.options.get("max_priority", MAX_PRIORITY))
        if not 0 <= self.max_priority <= MAX_PRIORITY:
            raise ImproperlyConfigured(f"transport option max_priority must be 0-255, not {self.max_priority}")
        # None (the default): confirms awaited later (see confirm()); True: by each publish; False: none.
        confirm_publish = self.options.get("confirm_publish")
        self.confirm_publish = None if confirm_publish is None else bool(confirm_publish)
        expires = self.options.get("queue_expires")
        # 0: queues without priorities, as Celery declares them (its `celery` queue can be shared).
        self.queue_arguments: dict[str, Any] = {"x-max-priority": self.max_priority} if self.max_priority else {}
        if expires:
            self.queue_arguments["x-expires"] = int(float(expires) * 1000)
        self.connect_timeout = float(self.options.get("connect_timeout", 5.0))
        self.operation_timeout = float(self.options.get("operation_timeout", 30.0))
        self.state_url = str(self.options.get("state_url") or DEFAULT_STATE_URL)
        self.state = state
        confirms = self.confirm_publish is not False
        self._link = _Link(connection_url(url), self.connect_timeout, self.operation_timeout, confirms)
        self._pid = os.getpid()
        # The consumer: deliveries RabbitMQ pushed, best priority first, until fetch hands them out.
        self._buffer: list[tuple[int, int, Delivery]] = []
        self._arrived = threading.Condition()
        self._sequence = itertools.count()
        self._outstanding: dict[int, str] = {}  # delivery tag -> queue, handed out and not yet settled
        self._settling: set[int] = set()  # settled here, their ack (or reject) not yet sent
        self._generation = 0  # of the consuming channel: a delivery from an earlier one is void
        self._widest = 0  # the consumer's window (qos), or the most one fetch has asked for
        self._subscription: tuple[tuple[str, ...], int, int] | None = None  # what consume() last set up
        self._interrupted = False
        self._confirms = _PublisherConfirms(self)  # each thread's publishes whose confirm is awaited later
        #: The management plugin's API (`management_url`, Flower's --broker-api): messages' ages.
        self.management = ManagementAPI(str(self.options.get("management_url") or default_url(url)), vhost_of(url))

    # -- names and plumbing ------------------------------------------------------------------
    def _name(self, queue: str) -> str:
        return self.prefix + queue

    @property
    def _dead_letter_queue(self) -> str:
        return f"{self.prefix}conveyor.dead-letters"

    def _amqp_priority(self, priority: int) -> int:
        """Conveyor's 0 (highest) .. 255 on RabbitMQ's max_priority (highest) .. 0: exact for
        0 .. max_priority - 1, and anything lower folded into RabbitMQ's lowest."""
        return self.max_priority - min(priority, self.max_priority)

    def _call(self, where: str, work: Callable[[_Session], Awaitable[T]]) -> T:
        """Run `work` on the loop and wait for it, after this thread's unconfirmed publishes
        (a call sees what the same thread published before it)."""
        self.confirm()
        return self._current_link().call(where, work)

    def _current_link(self) -> _Link:
        if os.getpid() != self._pid:  # a forked child: the parent's connection and loop are not ours
            link = self._link
            self._link = _Link(link.url, link.connect_timeout, link.operation_timeout, link.confirm_publish)
            self._pid = os.getpid()
        return self._link

    # -- publishing --------------------------------------------------------------------------
    def publish(self, messages: Sequence[Outgoing]) -> None:
        if messages:
            now = time.time()
            sends = [
                (self._name(m.queue), m.body, self._amqp_priority(m.priority), 0,
                 int((m.not_before - now) * 1000) if m.not_before else 0)
                for m in messages
            ]  # fmt: skip
            # Not waited for: a single message, due now, to a queue this connection has declared
            # (a first declare registers the queue in the state store, which must not be left to
            # an exit handler).
            if (
                len(sends) == 1
                and self.confirm_publish is None
                and not sends[0][4]
                and self._link.declared(sends[0][0])
            ):
                self._send(sends)
            else:
                self._call("publish", lambda session: session.publish(sends, self))

    def _send(self, sends: list[_Send]) -> None:
        """Publish without waiting for the confirm: it is awaited by `confirm()`, by this
        thread's next broker call, or once SEND_WINDOW are owed (the older half, then)."""
        confirms = self._confirms
        window = confirms.window()
        if not confirms.make_room(window) and window.unconfirmed and window.unconfirmed[0][1].done():
            confirms.settle(window, None)  # what has come back, without waiting
        link = self._current_link()
        window.unconfirmed.append((sends, link.submit(lambda session: session.publish(sends, self))))

    def confirm(self) -> None:
        """Wait for the confirms of this thread's publishes: a negative one raises BrokerError;
        those a lost connection left unanswered are published again (and waited for)."""
        self._confirms.confirm()

    # -- consuming ---------------------------------------------------------------------------
    def fetch(self, queues: Sequence[str], limit: int, timeout: float) -> list[Delivery]:
        names = [self._name(q) for q in queues]
        wanted = set(queues)
        self._interrupted = False
        self._subscribe(names, wanted, limit)
        taken = self._take(wanted, limit)
        if timeout <= 0:
            return taken if len(taken) >= limit else taken + self._settle(wanted, names, limit - len(taken))
        if taken or self._interrupted:
            return taken
        deadline = time.monotonic() + timeout
        generation = self._generation
        with self._arrived:
            while not self._interrupted and not self._has(wanted):
                remaining = deadline - time.monotonic()
                if self._generation != generation:
                    raise BrokerConnectionError(f"RabbitMQ broker fetch: lost the connection to {self.display_url}")
                if remaining <= 0:
                    break
                self._arrived.wait(remaining)
        return self._take(wanted, limit)

    def _settle(self, wanted: set[str], names: list[str], limit: int) -> list[Delivery]:
        """What is due now, for a fetch that does not wait: RabbitMQ pushes ready messages a
        moment after it counts them, so look until none is ready and none arrives."""
        deadline = time.monotonic() + SETTLE_SECONDS
        taken: list[Delivery] = []
        while len(taken) < limit and time.monotonic() < deadline:
            ready = self._subscribe(names, wanted, limit - len(taken), count=True)
            with self._arrived:
                if not self._has(wanted):
                    self._arrived.wait(0.05 if ready else 0.02)
            more = self._take(wanted, limit - len(taken))
            if more:
                taken += more
                deadline = time.monotonic() + SETTLE_SECONDS
            elif not ready:
                break
        return taken

    def _subscribe(self, names: list[str], wanted: set[str], limit: int, count: bool = False) -> int:
        """Consume from the queues with room for `limit` more; with `count`, how many messages
        they hold ready (not yet pushed to anyone)."""
        with self._arrived:
            # The window is the consumer's (qos) or the most a fetch has asked for at once: what
            # RabbitMQ leaves unacknowledged with us, acks still on their way included, so a lost
            # connection gives out again no more than that. Only deliveries buffered for queues
            # not asked for now widen it: they must not fill it.
            self._widest = max(self._widest, limit)
            window = self._widest + sum(1 for e in self._buffer if e[2].queue not in wanted)
        subscription = (tuple(names), window, self._generation)
        if not count and subscription == self._subscription and self._link.connected:
            return 0  # consuming as asked already: no trip to the loop
        ready = self._call("fetch", lambda session: session.consume(self, names, window, count))
        self._subscription = subscription
        return ready

    def qos(self, prefetch_count: int) -> None:
        with self._arrived:
            self._widest = max(self._widest, prefetch_count)

    def _has(self, wanted: set[str]) -> bool:
        return any(entry[2].queue in wanted for entry in self._buffer)

    def _take(self, wanted: set[str], limit: int) -> list[Delivery]:
        taken: list[Delivery] = []
        others: list[tuple[int, int, Delivery]] = []
        with self._arrived:
            while self._buffer and len(taken) < limit:
                entry = heapq.heappop(self._buffer)
                if entry[2].queue in wanted:
                    taken.append(entry[2])
                else:
                    others.append(entry)
            for entry in others:
                heapq.heappush(self._buffer, entry)
            self._outstanding.update((d.tag[1], d.queue) for d in taken)
        return taken

    def _received(self, queue: str, generation: int, message: Any) -> None:
        """Called on the loop for each delivery RabbitMQ pushes."""
        properties = message.header.properties
        headers = properties.headers or {}
        attempts = int(headers.get(ATTEMPTS_HEADER, 0)) + 1 + (1 if message.delivery.redelivered else 0)
        priority = properties.priority or 0
        body = message.body
        if "task" in headers and "id" in headers:  # sent by Celery: its headers travel in the AMQP frame
            body = celery_envelope(body, properties, headers)
        delivery = Delivery(queue, body, (generation, message.delivery.delivery_tag, priority), attempts)
        with self._arrived:
            if generation == self._generation:
                heapq.heappush(self._buffer, (-priority, next(self._sequence), delivery))
                self._arrived.notify_all()

    def _channel_lost(self, generation: int) -> None:
        """Called on the loop when the consuming channel closes: RabbitMQ takes back every
        delivery it held, so what is buffered or handed out is no longer ours."""
        with self._arrived:
            if generation == self._generation:
                self._generation += 1
                self._buffer.clear()
                self._outstanding.clear()
                self._settling.clear()
                self._arrived.notify_all()

    def _settle_tags(self, deliveries: Sequence[Delivery]) -> list[int]:
        """The delivery tags among these that the consuming channel still holds; settled now (until
        their ack or reject is sent, `_settled` says they are on their way)."""
        tags = []
        with self._arrived:
            for delivery in deliveries:
                generation, tag, _ = delivery.tag
                if generation == self._generation and self._outstanding.pop(tag, None) is not None:
                    tags.append(tag)
            self._settling.update(tags)
        return tags

    def _settled(self, tags: Sequence[int]) -> None:
        with self._arrived:
            self._settling.difference_update(tags)

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        tags = self._settle_tags(deliveries)
        if not tags:
            return
        with self._arrived:
            # One ack with `multiple` covers them all when no other delivery below the highest is
            # still unacknowledged here (held, buffered, or being settled by another call).
            others = [*self._outstanding, *self._settling.difference(tags)]
            others += [entry[2].tag[1] for entry in self._buffer]
            acks = [(max(tags), True)] if min(others, default=max(tags) + 1) > max(tags) else [(t, False) for t in tags]
        try:
            self._call("ack", lambda session: session.ack(acks))
        finally:
            self._settled(tags)

    def requeue(self, deliveries: Sequence[Delivery], delay: float = 0.0, *, redelivery: bool = False) -> None:
        held = set(self._settle_tags(deliveries))
        sends = [
            (self._name(d.queue), d.body, d.tag[2], d.attempts if redelivery else d.attempts - 1, int(delay * 1000))
            for d in deliveries
            if d.tag[1] in held
        ]
        if sends:
            # Published again before the ack: a crash in between leaves a copy, never none.
            try:
                self._call("requeue", lambda session: session.publish_then_ack(sends, sorted(held), self))
            finally:
                self._settled(sorted(held))

    def renew(self, deliveries: Sequence[Delivery]) -> list[Delivery]:
        # Nothing to extend: the channel holds them for as long as the connection lives.
        with self._arrived:
            return [d for d in deliveries if d.tag[0] != self._generation or d.tag[1] not in self._outstanding]

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        tags = self._settle_tags([delivery])
        if tags:
            headers = {"x-conveyor-queue": delivery.queue, "x-conveyor-reason": reason, "x-conveyor-at": time.time()}
            try:
                self._call("dead_letter", lambda session: session.dead_letter(delivery.body, headers, tags, self))
            finally:
                self._settled(tags)

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        letters = self._call("dead_letters", lambda session: session.read_dead_letters(self))
        return [DeadLetter(q, body, reason, at) for q, body, reason, at in reversed(letters[-limit:])]

    def requeue_dead_letters(self, limit: int) -> int:
        return self._call("requeue_dead_letters", lambda session: session.requeue_dead_letters(self, limit))

    def purge(self, queues: Sequence[str]) -> int:
        names = [self._name(q) for q in queues]
        return self._call("purge", lambda session: session.purge(names, self))

    def queue_sizes(self, queues: Sequence[str] | None = None) -> dict[str, int]:
        """Messages ready in each queue plus those this process holds (RabbitMQ counts neither
        the delayed ones nor those other consumers hold)."""
        if queues is None:
            queues = sorted(self.state.kv_items("amqp-queues"))
        names = [self._name(q) for q in queues]
        counts = self._call("queue_sizes", lambda session: session.ready_counts(names, declare=self))
        with self._arrived:
            held = [*self._outstanding.values(), *(entry[2].queue for entry in self._buffer)]
        return {q: counts[self._name(q)] + held.count(q) for q in queues}

    def oldest_ages(self, queues: Sequence[str]) -> dict[str, float]:
        # AMQP tells no message's age without consuming it: the management plugin's API does.
        ages = self.management.head_ages([self._name(q) for q in queues])
        return {q: ages[self._name(q)] for q in queues if self._name(q) in ages}

    def known_queue(self, queue_name: str) -> None:
        """Called the first time this process declares a queue: `queue_sizes()` lists it."""
        queue = queue_name[len(self.prefix) :]
        if self.state.kv_get("amqp-queues", queue) is None:
            self.state.kv_put("amqp-queues", queue, b"1")

    # -- replies, for the rpc result backend ---------------------------------------------------
    def consume_replies(self, queue: str, expires_ms: int, on_reply: Callable[[str, bytes, str], None]) -> None:
        """Declare the reply queue `queue` and pass each state arriving there to `on_reply`
        (task id, meta, state), on the connection's loop."""
        self._call("consume_replies", lambda session: session.consume_replies(queue, expires_ms, on_reply))

    def replies_consumed(self, queue: str) -> bool:
        """Whether the reply queue is still consumed (not after a lost connection)."""
        session = self._link.session
        return self._link.connected and session is not None and session.replies_consumed(queue)

    def send_replies(self, replies: Sequence[tuple[str, str, bytes, str]], content_type: str) -> None:
        """Send (reply queue, task id, meta, state) to the callers waiting for them."""
        self._call("send_replies", lambda session: session.send_replies(replies, content_type))

    # -- lifecycle -----------------------------------------------------------------------------
    def interrupt(self) -> None:
        """Wake a blocked fetch, stop consuming and give back what was pushed but not fetched
        (the worker is stopping: nobody here will run those)."""
        with self._arrived:
            self._interrupted = True
            tags = [entry[2].tag[1] for entry in self._buffer if entry[2].tag[0] == self._generation]
            self._buffer.clear()
            self._settling.update(tags)  # rejected below: no ack with `multiple` may cover them
            self._subscription = None  # the consumers are cancelled below: a later fetch starts them again
            self._arrived.notify_all()
        if not self._link.connected or os.getpid() != self._pid:
            self._settled(tags)
            return  # nothing is consumed here (or the connection's end gave them back)
        try:
            self._call("interrupt", lambda session: session.stop_consuming(tags))
        except BrokerError as exc:  # unreachable: the connection's end gives them back instead
            logger.debug("Could not give back %d prefetched messages: %s", len(tags), exc)
        finally:
            self._settled(tags)

    def close(self) -> None:
        try:
            self.confirm()
        except BrokerError as exc:
            logger.error("Messages published before the broker was closed were not taken by RabbitMQ: %s", exc)
        self.interrupt()
        if os.getpid() == self._pid:
            self._link.close()


class _PublisherConfirms(Pipelined[Window]):
    """A transport's publishes whose confirms are awaited later: (sends, future) per publish."""

    def __init__(self, transport: AMQPTransport) -> None:
        super().__init__()
        self.transport = transport

    def new_window(self) -> Window:
        return Window()

    def settle(self, window: Window, leave: int | None) -> None:
        """Await confirms, in the order sent, until `leave` remain (None: those already in)."""
        unconfirmed: deque[tuple[list[_Send], Future[None]]] = window.unconfirmed
        transport = self.transport
        again: list[_Send] = []
        refused: list[BrokerError] = []
        while unconfirmed and (len(unconfirmed) > leave if leave is not None else unconfirmed[0][1].done()):
            sends, future = unconfirmed.popleft()
            try:
                transport._link.result("publish", future)
            except BrokerConnectionError:
                again += sends  # RabbitMQ may or may not have it: at least once
            except BrokerError as exc:
                refused.append(exc)
        if again:
            logger.warning("Publishing %d messages again: the connection was lost before their confirms", len(again))
            transport._current_link().call("publish", lambda session: session.publish(again, transport))
        if refused:
            raise BrokerError(f"RabbitMQ refused {len(refused)} message(s) published without waiting: {refused[0]}")


class _Link:
    """The connection and the asyncio loop thread that drives it; reconnects on next use."""

    def __init__(self, url: str, connect_timeout: float, operation_timeout: float, confirm_publish: bool) -> None:
        self.url = url
        self.confirm_publish = confirm_publish
        parts = urlsplit(url)
        self.where = f"{parts.hostname}:{parts.port or 5672}"  # no password in messages
        self.connect_timeout = connect_timeout
        self.operation_timeout = operation_timeout
        self.session: _Session | None = None
        self._connecting = asyncio.Lock()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="conveyor-amqp", daemon=True)
        self._thread.start()

    @property
    def connected(self) -> bool:
        return self.session is not None and not self.session.connection.is_closed

    def declared(self, name: str) -> bool:
        """Whether the current connection has declared queue `name` (read from any thread)."""
        session = self.session
        return session is not None and name in session.declared_queues

    def call(self, where: str, work: Callable[[_Session], Awaitable[T]]) -> T:
        return self.result(where, self.submit(work))

    def submit(self, work: Callable[[_Session], Awaitable[T]]) -> Future[T]:
        """Start `work` on the loop (in the order submitted); its future."""
        import aiormq

        async def run() -> T:
            async with self._connecting:  # callers from many threads: one connection between them
                session = self.session
                if session is None or session.connection.is_closed:
                    connection = await asyncio.wait_for(aiormq.connect(self.url), self.connect_timeout)
                    session = self.session = _Session(connection, self.confirm_publish)
            return await work(session)

        return asyncio.run_coroutine_threadsafe(run(), self.loop)

    def result(self, where: str, future: Future[T]) -> T:
        """What submitted work returned; its failure as a BrokerError (BrokerConnectionError when
        the connection is the cause)."""
        import concurrent.futures

        import aiormq

        try:
            return future.result(self.operation_timeout)
        except TimeoutError as exc:
            if not future.done():  # RabbitMQ is silent (a memory or disk alarm blocks publishers)
                future.cancel()
                raise BrokerConnectionError(
                    f"RabbitMQ broker {where}: no answer within {self.operation_timeout} s"
                ) from exc
            raise BrokerConnectionError(f"RabbitMQ broker {where}: cannot connect to {self.where}") from exc
        except (
            OSError, concurrent.futures.CancelledError,
            aiormq.exceptions.AMQPConnectionError, aiormq.exceptions.ChannelInvalidStateError,
        ) as exc:  # fmt: skip
            raise BrokerConnectionError(f"RabbitMQ broker {where}: {_describe(exc)}") from exc
        except aiormq.exceptions.AMQPError as exc:
            raise BrokerError(f"RabbitMQ broker {where}: {_describe(exc)}") from exc

    def close(self) -> None:
        async def shut() -> None:
            if self.session is not None:
                await self.session.connection.close()

        if self._thread.is_alive():
            try:
                asyncio.run_coroutine_threadsafe(shut(), self.loop).result(5)
            except Exception:  # already broken: nothing to close cleanly
                pass
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)
        if not self._thread.is_alive():
            self.loop.close()


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


class _Session:
    """One connection's channels and what it has declared; used only on the loop."""

    def __init__(self, connection: Any, confirms: bool) -> None:
        self.connection = connection
        self.confirms = confirms  # publishes wait for RabbitMQ's confirm
        self._channels: dict[str, Any] = {}
        self.declared_queues: set[str] = set()
        self._ladder_bound: set[str] = set()
        self._ladder_ready = False
        self._consumer_tags: dict[str, str] = {}  # queue name -> consumer tag
        self._consuming = asyncio.Lock()
        self._consume_generation = -1
        self._replies: set[str] = set()  # reply queues consumed on the "replies" channel
        self._laddering = asyncio.Lock()
        self._publishing = asyncio.Lock()
        self._prefetch = 0

    async def channel(self, purpose: str) -> Any:
        """A channel per purpose ("publish" waits for confirms when they are on); one a channel
        error closed is opened again."""
        channel = self._channels.get(purpose)
        if channel is None or channel.is_closed:
            channel = await self.connection.channel(publisher_confirms=purpose == "publish" and self.confirms)
            self._channels[purpose] = channel
            if purpose == "replies":
                self._replies.clear()  # their consumers closed with the old channel
        return channel

    # -- declaring ---------------------------------------------------------------------------
    async def declare(self, name: str, broker: AMQPTransport) -> None:
        if name in self.declared_queues:
            return
        channel = await self.channel("admin")
        try:
            await channel.queue_declare(name, durable=True, arguments=broker.queue_arguments)
        except Exception as exc:
            import aiormq

            if isinstance(exc, aiormq.exceptions.ChannelPreconditionFailed):
                raise BrokerError(
                    f"queue {name!r} exists on RabbitMQ with other arguments than Conveyor's "
                    f"{broker.queue_arguments} ({exc}); delete it, or set the transport option "
                    "max_priority to the x-max-priority it has"
                ) from exc
            raise
        self.declared_queues.add(name)
        await asyncio.get_running_loop().run_in_executor(None, broker.known_queue, name)

    async def _ladder(self, name: str) -> None:
        """The delay ladder (once per connection) and the last step's binding to `name`."""
        async with self._laddering:
            await self._build_ladder(name)

    async def _build_ladder(self, name: str) -> None:
        channel = await self.channel("admin")
        if not self._ladder_ready:
            await channel.exchange_declare(DELAY_EXCHANGE, exchange_type="topic", durable=True)
            for level in range(DELAY_LEVELS - 1, -1, -1):
                await channel.exchange_declare(_rung(level), exchange_type="topic", durable=True)
            for level in range(DELAY_LEVELS - 1, -1, -1):
                rung, skip = _rung(level), "*." * (DELAY_LEVELS - 1 - level)
                onward = _rung(level - 1) if level else DELAY_EXCHANGE
                arguments = {"x-message-ttl": 2**level, "x-dead-letter-exchange": onward}
                await channel.queue_declare(rung, durable=True, arguments=arguments)
                await channel.queue_bind(rung, rung, routing_key=f"{skip}1.#")
                await channel.exchange_bind(onward, rung, routing_key=f"{skip}0.#")
            self._ladder_ready = True
        if name not in self._ladder_bound:
            await channel.queue_bind(name, DELAY_EXCHANGE, routing_key="*." * DELAY_LEVELS + name)
            self._ladder_bound.add(name)

    # -- publishing --------------------------------------------------------------------------
    async def publish(self, sends: Sequence[_Send], broker: AMQPTransport) -> None:
        """Publish (queue name, body, AMQP priority, attempts so far, delay ms) tuples; wait for the confirms."""
        from pamqp.commands import Basic

        async with self._publishing:
            # One publish at a time until its frames are queued: the messages of publishes that
            # did not wait for each other's confirms then reach RabbitMQ in the order sent.
            pending = await self._send(sends, broker)
        confirms = await asyncio.gather(*pending)
        if self.confirms and not all(isinstance(c, Basic.Ack) for c in confirms):
            raise BrokerError("RabbitMQ did not accept every message published (a negative confirm)")

    async def _send(self, sends: Sequence[_Send], broker: AMQPTransport) -> list[asyncio.Future[Any]]:
        from pamqp.commands import Basic

        for name in dict.fromkeys(send[0] for send in sends):
            await self.declare(name, broker)
        for name in dict.fromkeys(send[0] for send in sends if send[4] > 0):
            await self._ladder(name)
        channel = await self.channel("publish")
        pending = []
        # When each message is ready (the `timestamp` property, in whole seconds): the management
        # API's head_message_timestamp, the age of a queue's oldest message (see oldest_ages).
        now = time.time()
        ready_now = datetime.datetime.fromtimestamp(int(now), datetime.UTC)
        for name, body, priority, attempts, delay_ms in sends:
            ready_at = (
                datetime.datetime.fromtimestamp(int(now + delay_ms / 1000), datetime.UTC) if delay_ms else ready_now
            )
            frame: dict[str, Any] = {"delivery_mode": 2, "priority": priority, "headers": None, "timestamp": ready_at}
            native = celery_frame(body)
            if native is not None:  # in Celery's format: as Celery puts it on the wire, for Celery workers too
                body, fields = native
                frame.update(fields)
            if attempts:
                frame["headers"] = {**(frame["headers"] or {}), ATTEMPTS_HEADER: attempts}
            properties = Basic.Properties(**frame)
            if delay_ms > 0:
                exchange, key = _rung(DELAY_LEVELS - 1), delay_ladder_key(min(delay_ms, 2**DELAY_LEVELS - 1), name)
            else:
                exchange, key = "", name
            # Tasks start in the order made, each queueing its frames before it awaits anything.
            publish = channel.basic_publish(body, exchange=exchange, routing_key=key, properties=properties)
            pending.append(asyncio.ensure_future(publish))
        return pending

    async def publish_then_ack(
        self, sends: Sequence[tuple[str, bytes, int, int, int]], tags: Sequence[int], broker: AMQPTransport
    ) -> None:
        await self.publish(sends, broker)
        await self.ack([(tag, False) for tag in tags])

    # -- consuming ---------------------------------------------------------------------------
    async def consume(self, broker: AMQPTransport, names: Sequence[str], prefetch: int, count: bool) -> int:
        async with self._consuming:  # fetches from several threads share the one consuming channel
            return await self._consume(broker, names, prefetch, count)

    async def _consume(self, broker: AMQPTransport, names: Sequence[str], prefetch: int, count: bool) -> int:
        channel = self._channels.get("consume")
        if channel is None or channel.is_closed:
            # A new consuming channel: its deliveries carry a new generation, and its
            # closing voids them (RabbitMQ takes back whatever a closed channel held).
            if channel is not None:
                broker._channel_lost(self._consume_generation)  # its own callback may not have run yet
            channel = self._channels["consume"] = await self.connection.channel(publisher_confirms=False)
            self._consumer_tags.clear()
            self._prefetch = 0
            generation = self._consume_generation = broker._generation
            channel.closing.add_done_callback(lambda _: broker._channel_lost(generation))
        if prefetch > self._prefetch:
            await channel.basic_qos(prefetch_count=prefetch, global_=True)
            self._prefetch = prefetch
        for name in names:
            if name in self._consumer_tags:
                continue
            await self.declare(name, broker)
            queue, generation = name[len(broker.prefix) :], broker._generation

            async def on_message(message: Any, queue: str = queue, generation: int = generation) -> None:
                broker._received(queue, generation, message)

            ok = await channel.basic_consume(name, on_message)
            self._consumer_tags[name] = ok.consumer_tag
        return sum((await self.ready_counts(names)).values()) if count else 0

    async def stop_consuming(self, tags: Sequence[int]) -> None:
        async with self._consuming:
            await self._stop_consuming(tags)

    async def _stop_consuming(self, tags: Sequence[int]) -> None:
        channel = self._channels.get("consume")
        if channel is None or channel.is_closed:
            return
        for consumer_tag in self._consumer_tags.values():
            await channel.basic_cancel(consumer_tag)
        self._consumer_tags.clear()
        for tag in tags:
            await channel.basic_reject(tag, requeue=True)

    async def ack(self, acks: Sequence[tuple[int, bool]]) -> None:
        """Send (delivery tag, multiple) acks on the consuming channel."""
        channel = self._channels.get("consume")
        if channel is None or channel.is_closed:
            return  # the deliveries went back with the channel
        for tag, multiple in acks:
            await channel.basic_ack(tag, multiple=multiple)  # written before this returns: a process may exit

    async def ready_counts(self, names: Sequence[str], declare: AMQPTransport | None = None) -> dict[str, int]:
        counts = {}
        for name in names:
            if declare is not None:
                await self.declare(name, declare)
            channel = await self.channel("admin")
            try:
                ok = await channel.queue_declare(name, passive=True)
            except Exception as exc:
                import aiormq

                if not isinstance(exc, aiormq.exceptions.ChannelNotFoundEntity):
                    raise
                counts[name] = 0
            else:
                counts[name] = ok.message_count
        return counts

    async def purge(self, names: Sequence[str], broker: AMQPTransport) -> int:
        removed = 0
        for name in names:
            await self.declare(name, broker)
            ok = await (await self.channel("admin")).queue_purge(name)
            removed += ok.message_count
        return removed

    # -- replies -------------------------------------------------------------------------------
    def replies_consumed(self, name: str) -> bool:
        channel = self._channels.get("replies")
        return name in self._replies and channel is not None and not channel.is_closed

    async def consume_replies(self, name: str, expires_ms: int, on_reply: Callable[[str, bytes, str], None]) -> None:
        channel = await self.channel("replies")
        if name in self._replies:
            return
        await channel.queue_declare(name, durable=False, arguments={"x-expires": expires_ms})

        async def on_message(message: Any) -> None:
            properties = message.header.properties
            state = (properties.headers or {}).get(STATE_HEADER, "")
            on_reply(str(properties.correlation_id), message.body, str(state))

        await channel.basic_consume(name, on_message, no_ack=True)
        self._replies.add(name)

    async def send_replies(self, replies: Sequence[tuple[str, str, bytes, str]], content_type: str) -> None:
        from pamqp.commands import Basic

        channel = await self.channel("publish")
        sends = []
        for queue, task_id, meta, state in replies:
            headers: dict[str, Any] = {STATE_HEADER: state}
            properties = Basic.Properties(correlation_id=task_id, content_type=content_type, headers=headers)
            sends.append(channel.basic_publish(meta, routing_key=queue, properties=properties))
        await asyncio.gather(*sends)

    # -- dead letters ------------------------------------------------------------------------
    async def _declare_dead_letters(self, broker: AMQPTransport) -> str:
        name = broker._dead_letter_queue
        if name not in self.declared_queues:
            arguments: dict[str, Any] = {"x-max-length": DEAD_LETTERS_KEPT}
            if "x-expires" in broker.queue_arguments:
                arguments["x-expires"] = broker.queue_arguments["x-expires"]
            await (await self.channel("admin")).queue_declare(name, durable=True, arguments=arguments)
            self.declared_queues.add(name)
        return name

    async def dead_letter(
        self, body: bytes, headers: dict[str, Any], tags: Sequence[int], broker: AMQPTransport
    ) -> None:
        from pamqp.commands import Basic

        name = await self._declare_dead_letters(broker)
        channel = await self.channel("publish")
        await channel.basic_publish(
            body, routing_key=name, properties=Basic.Properties(delivery_mode=2, headers=headers)
        )
        await self.ack([(tag, False) for tag in tags])

    async def read_dead_letters(self, broker: AMQPTransport) -> list[tuple[str, bytes, str, float]]:
        """Every dead letter, oldest first, read on a channel of its own and then left in place:
        closing that channel gives back what it took, in order."""
        name = await self._declare_dead_letters(broker)
        channel = await self.connection.channel(publisher_confirms=False)
        letters = []
        try:
            while True:
                message = await _get(channel, name)
                if message is None:
                    break
                headers = message.header.properties.headers or {}
                letters.append(
                    (str(headers.get("x-conveyor-queue", "")), message.body,
                     str(headers.get("x-conveyor-reason", "")), float(headers.get("x-conveyor-at", 0.0)))
                )  # fmt: skip
        finally:
            await channel.close()
        return letters

    async def requeue_dead_letters(self, broker: AMQPTransport, limit: int) -> int:
        name = await self._declare_dead_letters(broker)
        # Only those there now: one sent back that fails again joins the tail meanwhile.
        there = (await self.ready_counts([name]))[name]
        channel = await self.connection.channel(publisher_confirms=False)
        moved = 0
        try:
            for _ in range(min(limit, there)):
                message = await _get(channel, name)
                if message is None:
                    break
                headers = message.header.properties.headers or {}
                queue = str(headers.get("x-conveyor-queue", ""))
                send = (broker._name(queue), message.body, broker._amqp_priority(0), 0, 0)
                await self.publish([send], broker)
                await channel.basic_ack(message.delivery.delivery_tag)
                moved += 1
        finally:
            await channel.close()
        return moved


async def _get(channel: Any, queue: str) -> Any:
    """One message by basic.get, or None when the queue is empty."""
    from pamqp.commands import Basic

    message = await channel.basic_get(queue, no_ack=False)
    return None if isinstance(message.delivery, Basic.GetEmpty) else message
