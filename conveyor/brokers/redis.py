"""The Redis transport: leases, delays and exact priorities, each transition one Lua script.

Keys of queue `q` (prefix `P` = transport option `global_keyprefix` + `conveyor`),
all with the hash tag `{q}` so one queue lives in one cluster slot:

| key | type | content |
|---|---|---|
| `P:{q}:ready:<priority>` | LIST | ids of ready messages of that priority, next first |
| `P:{q}:priorities` | ZSET | the priorities that have ready messages (score: the priority; 0 first) |
| `P:{q}:waiting` | ZSET | id -> ms when it becomes ready: delayed messages and leased ones |
| `P:{q}:msgs` | HASH | id -> message bytes |
| `P:{q}:state` | HASH | id -> "priority:attempts:lease" for messages that were ever leased or delayed |
| `P:{q}:seq` | STRING | id counter |
| `P:{q}:dead` | LIST | dead letters |
| `P:{q}:waiters` | ZSET | "consumer:token:lease_ms" -> ms (Redis clock) its registration lapses: idle consumers |
| `P:{q}:inbox:<consumer>` | LIST, channel | a message leased to that idle consumer (sent, and kept) |
| `P:{q}:notify` | channel | "a message is ready", for idle consumers |

A message is either ready (in its priority's list) or waiting (in `waiting`,
with its state entry). Fetch first promotes waiting entries that are due (delays
that came due, to the tail of their list; leases that lapsed, to its head: a
dead worker's deliveries come back to whoever fetches next), then pops up to
`limit` ready ids from the lists of the best priorities and leases them with a
fresh token. A list of ids costs a few bytes a message where a sorted set
would cost about a hundred: a queued message is its body in `msgs` and little
else. Ack, renew, requeue and dead-letter act only when the token still
matches (fencing).

An idle consumer of one queue registers as a waiter in the same script call
that found nothing ready, then waits on its thread's subscription to the
queue's `notify` channel and to its own inbox channel. A publish hands each
registered waiter one new message directly: leased to it with the token it
registered, sent on its inbox channel (and kept in its inbox list), so the
consumer wakes with the message and claims nothing: one round trip less
between a `delay()` and its task. What a publish does not hand over is made
ready and signals `notify`, as requeues and dead letters sent back do. A
consumer that stops waiting ends its registration and reads its inbox list in
one script call: a message handed to it as it stopped is found there (and its
copy on the channel ignored). A dead consumer's registration lapses within its
wait plus a second; a message handed to it in that second comes back when its
lease lapses, as any delivery of a dead worker. Consumers of several queues
wait on `notify` alone. All wake on their own when the earliest waiting entry
falls due (the wait is timed by the client: Redis times blocking commands in
steps of 1/hz, 100 ms by default).
"""

from __future__ import annotations

import collections
import json
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from conveyor import redisdb
from conveyor.brokers.base import DeadLetter, Delivery, Outgoing, Transport, claim_or_wait
from conveyor.exceptions import BrokerConnectionError, BrokerError
from conveyor.lua import script

#: Readings of a queue's id counter kept for `oldest_ages` (an hour at the dashboard's pace).
ID_SAMPLES_KEPT = 1800
#: The largest message handed to an idle consumer over pub/sub; a larger one is queued and the
#: consumer notified. Redis cuts a subscriber whose output buffer passes 32 MB (its default
#: client-output-buffer-limit for pubsub), so big bodies never take that path.
HANDOFF_MAX_BYTES = 1024 * 1024
#: A waiter's registration outlives the wait it was made for by this much (then it lapses).
WAITER_SLACK_MS = 1000

# The server-side scripts (conveyor/lua/*.lua: each names its KEYS and ARGV).
PUBLISH = script("publish")
FETCH = script("fetch")
UNWAIT = script("unwait")
ACK = script("ack")
RENEW = script("renew")
REQUEUE = script("requeue")
TAKE_TOKEN = script("take_token")
MARK_REVOKED = script("mark_revoked")
KV_SWAP = script("kv_swap")
DEAD_LETTER = script("dead_letter")
REQUEUE_DEAD = script("requeue_dead")
PURGE = script("purge")
PEEK = script("peek")


class _PubSubSignal:
    """The wake-up signal of an idle consumer: its subscription to the queues' notify channels."""

    def __init__(self, pubsub: Any) -> None:
        self.pubsub = pubsub

    def drain(self) -> None:
        while self.pubsub.get_message(timeout=0) is not None:
            pass

    def wait(self, timeout: float) -> None:
        self.pubsub.get_message(timeout=timeout)


class _Waiter:
    """The wake-up signal of an idle consumer of one queue: its registration as a waiter
    (made by the claim that found nothing ready) and the thread's subscription to the queue's
    notify channel and to its own inbox channel, on which a publish sends it a message leased
    to it. The message is also kept in the inbox list, for the end of a registration that
    raced a hand-off: the consumer then finds it there instead."""

    def __init__(self, transport: RedisTransport, queue: str) -> None:
        self.transport = transport
        self.queue = queue
        consumer = f"{transport._consumer}-{threading.get_ident()}"
        self.inbox = f"{transport.redis.prefix}:{{{queue}}}:inbox:{consumer}"  # a list, and a channel
        self.consumer = consumer
        self.pubsub = transport._pubsub([queue], self.inbox)
        self.member: str | None = None  # "consumer:token:lease_ms": the last claim's registration, until it ends
        self.handed: list[Delivery] = []

    def register(self, token: str, lease_ms: int, wait: float) -> list[Any]:
        """The claim's extra arguments that register this consumer as a waiter."""
        self.member = f"{self.consumer}:{token}:{lease_ms}"
        return [self.member, int(wait * 1000) + WAITER_SLACK_MS]

    def _registered(self, delivery: Delivery) -> bool:
        """Whether the delivery was handed to the current registration (its token is the lease's)."""
        return self.member is not None and self.member.split(":")[1] == delivery.tag[2]

    def drain(self) -> None:
        # A consumer that looks again ends its registration first, and keeps what it was handed.
        while self._receive(self.pubsub.get_message(timeout=0)):
            pass
        self.handed += self.end()

    def wait(self, timeout: float) -> None:
        # get_message() also returns None, early, for a subscription's confirmation it skips.
        deadline = time.monotonic() + timeout
        message = None
        while message is None and (remaining := deadline - time.monotonic()) > 0:
            message = self.pubsub.get_message(timeout=remaining)
        self._receive(message)

    def _receive(self, message: dict[str, Any] | None) -> bool:
        if message is None:
            return False
        if message["channel"] == self.inbox.encode() and message["data"][:1] == b"d":  # not interrupt()'s
            delivery = self._delivery(message["data"])
            if self._registered(delivery):  # else it was found in the list already, or is stale
                self.member = None  # the publish that handed it ended the registration
                self.handed.append(delivery)
        return True

    def end(self) -> list[Delivery]:
        """End the registration, if any; what was handed to it meanwhile."""
        if self.member is None:
            return []
        items = self.transport.redis.scripts.run("unwait", self.transport._keys(self.queue)[:1], [self.member])
        handed = [d for d in map(self._delivery, items) if self._registered(d)]
        self.member = None
        return handed

    def _delivery(self, item: bytes) -> Delivery:
        message_id, attempts, token, body = item[2:].split(b":", 3)
        tag = (self.queue, message_id.decode(), token.decode())
        return Delivery(self.queue, body, tag, int(attempts), not_revoked=item[1:2] == b"1")

    def take(self) -> list[Delivery]:
        handed, self.handed = self.handed, []
        return handed


class RedisConnection:
    """One Redis deployment as the transport and the state store share it: the client, the
    scripts (one pipeline per thread, so a thread reads its own writes), the key prefix."""

    def __init__(self, url: str, options: Mapping[str, Any]) -> None:
        self.prefix = f"{options.get('global_keyprefix', '')}conveyor"
        self.client = redisdb.connect(url, options)
        self.cluster = redisdb.is_cluster(self.client)
        self.scripts = redisdb.Scripts(
            self.client,
            {
                "publish": PUBLISH, "fetch": FETCH, "ack": ACK, "renew": RENEW,
                "requeue": REQUEUE, "dead_letter": DEAD_LETTER, "purge": PURGE, "take_token": TAKE_TOKEN,
                "requeue_dead": REQUEUE_DEAD, "unwait": UNWAIT, "peek": PEEK,
                "kv_swap": KV_SWAP, "mark_revoked": MARK_REVOKED,
            },
        )  # fmt: skip

    def translate(self, where: str) -> Any:
        return redisdb.translate(BrokerError, BrokerConnectionError, f"Redis broker {where}")

    @property
    def direct(self) -> Any:
        """The client, for commands other than scripts, once this thread's publishes are confirmed:
        they went out on another connection, and a read must see them (read your own writes)."""
        self.scripts.confirm()
        return self.client

    @property
    def revocations_key(self) -> str:
        """Exists while any revocation does: a fetch that finds it absent needs no revoked() call."""
        return f"{self.prefix}:revocations"

    def close(self) -> None:
        self.scripts.close()
        self.client.close()


class RedisTransport(Transport):
    def __init__(self, url: str, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(url, options)
        self.redis = RedisConnection(url, self.options)
        self.polling_interval = float(self.options.get("polling_interval", 5.0))
        #: Whether each publish waits for Redis's reply (else it is read by a later call or confirm()).
        self.confirm_publish = bool(self.options.get("confirm_publish", False))
        self._known_queues: set[str] = set()
        self._queue_keys: dict[str, list[str]] = {}
        self._local = threading.local()
        self._pubsubs: list[Any] = []
        self._consumer = uuid.uuid4().hex[:12]
        self._lock = threading.Lock()
        #: Per queue, (when, the last id given out by then): `oldest_ages`' clock.
        self._ids_given: dict[str, collections.deque[tuple[float, int]]] = {}

    def _keys(self, queue: str) -> list[str]:
        keys = self._queue_keys.get(queue)
        if keys is None:
            base = f"{self.redis.prefix}:{{{queue}}}"
            keys = [f"{base}:priorities", f"{base}:waiting", f"{base}:msgs", f"{base}:state", f"{base}:seq"]
            self._queue_keys[queue] = keys
        return keys

    def _publish_keys(self, queue: str) -> list[str]:
        # A message handed to a waiter says whether a revocation was live (spares it a revoked()
        # call); on a cluster that key is in another slot, so the waiter asks.
        return self._keys(queue) if self.redis.cluster else [*self._keys(queue), self.redis.revocations_key]

    def _channel(self, queue: str) -> str:
        return f"{self.redis.prefix}:{{{queue}}}:notify"

    @property
    def _queues_key(self) -> str:
        return f"{self.redis.prefix}:queues"

    def publish(self, messages: Sequence[Outgoing]) -> None:
        now_ms = int(time.time() * 1000)
        by_queue: dict[str, list[Any]] = {}
        for m in messages:
            args = by_queue.get(m.queue)
            if args is None:
                args = by_queue[m.queue] = [now_ms, self._channel(m.queue), HANDOFF_MAX_BYTES]
            args += (m.priority, int(m.not_before * 1000) if m.not_before else 0, m.body)
        calls = [("publish", self._publish_keys(queue), args) for queue, args in by_queue.items()]
        new_queues = sorted(by_queue.keys() - self._known_queues)
        with self.redis.translate("publish"):
            if len(calls) == 1 and not new_queues:
                # The common case, one queue already known: sent without waiting for the reply
                # unless confirm_publish is set (Scripts.send; the reply is read by confirm()).
                name, keys, args = calls[0]
                if self.confirm_publish:
                    self.redis.scripts.run(name, keys, args)
                else:
                    self.redis.scripts.send(("EVALSHA", self.redis.scripts.shas[name], len(keys), *keys, *args))
                return
            batch = self.redis.scripts.batch()
            for call in calls:
                batch.script(*call)
            if new_queues:
                batch.command("SADD", self._queues_key, *new_queues)
            batch.execute()
            self._known_queues.update(new_queues)

    def confirm(self) -> None:
        with self.redis.translate("publish"):
            self.redis.scripts.confirm()

    def _pubsub(self, queues: Sequence[str], *others: str) -> Any:
        """This thread's subscription to the queues' notify channels (and `others`)."""
        current = getattr(self._local, "pubsub", None)
        channels = tuple(sorted([*(self._channel(q) for q in queues), *others]))
        if current is not None and self._local.channels == channels:
            return current
        if current is not None:
            current.close()
        pubsub = self.redis.client.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(*channels)
        self._local.pubsub, self._local.channels = pubsub, channels
        with self._lock:
            self._pubsubs.append(pubsub)
        return pubsub

    def _drop_pubsub(self) -> None:
        current = getattr(self._local, "pubsub", None)
        if current is not None:
            try:
                current.close()
            except Exception:  # the connection is already broken: nothing to close cleanly
                pass
            self._local.pubsub = None

    def fetch(self, queues: Sequence[str], limit: int, timeout: float) -> list[Delivery]:
        with self.redis.translate("fetch"):
            try:
                if timeout > 0 and len(queues) == 1:
                    return self._wait_as_waiter(queues[0], limit, timeout)
                signal = _PubSubSignal(self._pubsub(queues)) if timeout > 0 else None
                return claim_or_wait(lambda: self._claim(queues, limit), signal, timeout, self.polling_interval)
            except Exception:
                # A broken connection: a registration made on it lapses on its own, and a message
                # handed to it comes back when its lease lapses.
                self._drop_pubsub()
                raise

    def _wait_as_waiter(self, queue: str, limit: int, timeout: float) -> list[Delivery]:
        """One queue: wait registered as a waiter, to be handed the next message published."""
        inbox = _Waiter(self, queue)

        def claim() -> tuple[list[Delivery], float | None]:
            handed = inbox.take()
            return (handed, None) if handed else self._claim([queue], limit, inbox, timeout)

        taken = claim_or_wait(claim, inbox, timeout, self.polling_interval)
        return taken + inbox.end()  # a message handed over as the wait ended is this fetch's

    def _claim(
        self, queues: Sequence[str], limit: int, inbox: _Waiter | None = None, wait: float = 0.0
    ) -> tuple[list[Delivery], float | None]:
        now_ms = int(time.time() * 1000)
        token = uuid.uuid4().hex
        lease_ms = int(self.lease_seconds * 1000)
        if len(queues) > 1:
            return self._claim_many(queues, limit, now_ms, token, lease_ms)
        [queue] = queues
        batch = self.redis.scripts.batch()
        args = [now_ms, lease_ms, limit, token]
        if inbox is not None:
            args += inbox.register(token, lease_ms, min(wait, self.polling_interval))
        batch.script("fetch", self._keys(queue)[:4], args)
        batch.command("EXISTS", self.redis.revocations_key)  # same round trip: spares the worker a revoked() call
        reply, revocations = batch.execute()
        taken, next_due = self._deliveries(queue, reply, token, not revocations)
        if taken and inbox is not None:
            inbox.member = None  # something was ready: the script registered nobody
        return taken, next_due

    def _claim_many(
        self, queues: Sequence[str], limit: int, now_ms: int, token: str, lease_ms: int
    ) -> tuple[list[Delivery], float | None]:
        # Exact priority across queues: peek each queue's best, then claim the merged top `limit`
        # (equal priorities taken from the queues in turn).
        batch = self.redis.scripts.batch()
        for queue in queues:
            batch.script("peek", self._keys(queue)[:1], [limit])
        best = sorted(
            (priority, position, index, queue)
            for index, (queue, levels) in enumerate(zip(queues, batch.execute()))
            for priority, length in zip(levels[0::3], levels[1::3])
            for position in range(min(length, limit))
        )[:limit]
        wanted = {queue: sum(1 for *_, q in best if q == queue) for queue in queues}
        # Queues with nothing ready still get a claim of 1: it promotes their due waiting entries.
        batch = self.redis.scripts.batch()
        for queue in queues:
            batch.script("fetch", self._keys(queue)[:4], [now_ms, lease_ms, max(1, wanted[queue]), token])
        batch.command("EXISTS", self.redis.revocations_key)
        *replies, revocations = batch.execute()
        claimed: dict[str, Iterator[Delivery]] = {}
        next_due: float | None = None
        surplus: list[Delivery] = []
        for queue, reply in zip(queues, replies):
            deliveries, due = self._deliveries(queue, reply, token, not revocations)
            claimed[queue] = iter(deliveries[: wanted[queue]])
            surplus += deliveries[wanted[queue] :]
            if due is not None:
                next_due = due if next_due is None else min(next_due, due)
        if surplus:
            self.requeue(surplus)
        # in the merged order: the best first, whichever queue it came from
        taken = [d for d in (next(claimed[queue], None) for *_, queue in best) if d is not None]
        return taken, (None if taken else next_due)

    @staticmethod
    def _deliveries(queue: str, reply: list[Any], token: str, not_revoked: bool) -> tuple[list[Delivery], float | None]:
        if len(reply) == 1:
            due = reply[0]
            return [], (float(due) / 1000 if due else None)
        return [
            Delivery(queue, reply[i + 1], (queue, reply[i].decode(), token), int(reply[i + 2]), not_revoked)
            for i in range(0, len(reply), 3)
        ], None

    def _by_queue(self, deliveries: Sequence[Delivery]) -> dict[str, list[Delivery]]:
        grouped: dict[str, list[Delivery]] = {}
        for delivery in deliveries:
            grouped.setdefault(delivery.tag[0], []).append(delivery)
        return grouped

    def _run_per_queue(self, script: str, deliveries: Sequence[Delivery], head: Sequence[Any] = ()) -> list[Any]:
        batch = self.redis.scripts.batch()
        grouped = self._by_queue(deliveries)
        for queue, items in grouped.items():
            batch.script(script, self._keys(queue)[:4], [*head, *(part for d in items for part in d.tag[1:])])
        return list(zip(grouped, batch.execute()))

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        if deliveries:
            sha = self.redis.scripts.shas["ack"]
            with self.redis.translate("ack"):
                # Sent without waiting, like a single publish (Scripts.send): a result written
                # next need not wait behind an early ack's round trip. An ack only removes, so
                # Redis refuses none; one on a lost connection is sent again.
                for queue, items in self._by_queue(deliveries).items():
                    self.redis.scripts.send(
                        ("EVALSHA", sha, 4, *self._keys(queue)[:4], *(p for d in items for p in d.tag[1:]))
                    )

    def requeue(self, deliveries: Sequence[Delivery], delay: float = 0.0, *, redelivery: bool = False) -> None:
        if not deliveries:
            return
        visible_at = int((time.time() + delay) * 1000) if delay > 0 else 0
        with self.redis.translate("requeue"):
            self._run_per_queue("requeue", deliveries, head=[visible_at, 0 if redelivery else 1])

    def renew(self, deliveries: Sequence[Delivery]) -> list[Delivery]:
        if not deliveries:
            return []
        until_ms = int((time.time() + self.lease_seconds) * 1000)
        with self.redis.translate("renew"):
            replies = self._run_per_queue("renew", deliveries, head=[until_ms])
        lost = {(queue, raw.decode()) for queue, ids in replies for raw in ids}
        return [d for d in deliveries if (d.tag[0], d.tag[1]) in lost]

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        queue, message_id, token = delivery.tag
        keys = [*self._keys(queue)[:4], f"{self.redis.prefix}:{{{queue}}}:dead"]
        with self.redis.translate("dead_letter"):
            self.redis.scripts.run("dead_letter", keys, [message_id, token, reason, queue, time.time()])

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        letters: list[DeadLetter] = []
        with self.redis.translate("dead_letters"):
            for raw_queue in self.redis.direct.smembers(self._queues_key):
                queue = raw_queue.decode()
                items = self.redis.direct.lrange(f"{self.redis.prefix}:{{{queue}}}:dead", 0, 2 * limit - 1)
                for i in range(0, len(items) - 1, 2):
                    info = json.loads(items[i])
                    letters.append(DeadLetter(info["queue"], items[i + 1], info["reason"], info["at"]))
        letters.sort(key=lambda letter: letter.failed_at, reverse=True)
        return letters[:limit]

    def requeue_dead_letters(self, limit: int) -> int:
        with self.redis.translate("requeue_dead_letters"):
            # Oldest first across queues: each queue's oldest `limit` (its list's tail), merged by time.
            queues = [raw.decode() for raw in self.redis.direct.smembers(self._queues_key)]
            pipe = self.redis.direct.pipeline(transaction=False)
            for queue in queues:
                pipe.lrange(f"{self.redis.prefix}:{{{queue}}}:dead", -2 * limit, -1)
            oldest = sorted(
                (json.loads(items[i])["at"], queue)
                for queue, items in zip(queues, pipe.execute())
                for i in range(0, len(items) - 1, 2)
            )[:limit]
            moved = 0
            for queue in {queue for _, queue in oldest}:
                count = sum(1 for _, q in oldest if q == queue)
                keys = [*self._keys(queue), f"{self.redis.prefix}:{{{queue}}}:dead"]
                moved += int(self.redis.scripts.run("requeue_dead", keys, [count, self._channel(queue)]))
        return moved

    def purge(self, queues: Sequence[str]) -> int:
        with self.redis.translate("purge"):
            return sum(int(self.redis.scripts.run("purge", self._keys(queue)[:4], [])) for queue in queues)

    def queue_sizes(self, queues: Sequence[str] | None = None) -> dict[str, int]:
        with self.redis.translate("queue_sizes"):
            if queues is None:
                queues = sorted(q.decode() for q in self.redis.direct.smembers(self._queues_key))
            pipe = self.redis.direct.pipeline(transaction=False)
            for queue in queues:
                pipe.hlen(self._keys(queue)[2])
            return dict(zip(queues, (int(n) for n in pipe.execute())))

    def oldest_ages(self, queues: Sequence[str]) -> dict[str, float]:
        # Redis records no time per message. The id counter, read at each call (the dashboard
        # calls every few seconds), tells when ids were given out; the oldest id at the head of a
        # ready list then tells how long it has waited, to within the calls' interval. An id
        # given out before this process first looked has waited at least since that look.
        with self.redis.translate("oldest_ages"):
            batch = self.redis.scripts.batch()
            for queue in queues:
                priorities, _, _, _, seq = self._keys(queue)
                batch.command("GET", seq)
                batch.script("peek", [priorities], [0])
            replies = batch.execute()
        now, ages = time.time(), {}
        for index, queue in enumerate(queues):
            counter, levels = replies[2 * index], replies[2 * index + 1]
            given = self._ids_given.setdefault(queue, collections.deque(maxlen=ID_SAMPLES_KEPT))
            if counter is not None and (not given or given[-1][1] != int(counter)):
                given.append((now, int(counter)))
            if levels:
                head_id = min(levels[2::3])
                at = next((at for at, last_id in given if last_id >= head_id), None)
                if at is not None:
                    ages[queue] = max(0.0, now - at)
        return ages

    def interrupt(self) -> None:
        # Wake this process's blocked fetches (and, harmlessly, other consumers of those queues).
        with self._lock:
            channels = {channel for pubsub in self._pubsubs for channel in pubsub.channels}
        try:
            for channel in channels:
                self.redis.direct.publish(channel, b"1")
        except Exception:  # shutting down with Redis unreachable: the fetch times out anyway
            pass

    def close(self) -> None:
        with self._lock:
            for pubsub in self._pubsubs:
                try:
                    pubsub.close()
                except Exception:
                    pass
            self._pubsubs.clear()
        self._local = threading.local()
        self.redis.close()
