"""The transport interface: a few operations on opaque message bytes.

A transport holds messages in named queues and hands each out under a *lease*:
a delivery belongs to one consumer until it is acknowledged, given back, or
its lease lapses without renewal, when it becomes deliverable again (at-least-
once). Every delivery carries a token; acking or renewing with a token whose
lease was reclaimed does nothing (fencing), so a stale worker cannot complete
work another worker now owns.

Serialization, routing and task semantics live above this interface; each
implementation uses its own store's native model below it. What workers share
besides messages (revocations, rate limits, beat's state) is the state store's
(`conveyor.brokers.state`): a broker URL opens both.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from conveyor.urls import redacted

#: Seconds a delivery stays leased without renewal (transport option `lease_timeout`).
DEFAULT_LEASE_SECONDS = 30.0
#: Priorities are 0-255, 0 the highest, on every broker.
MAX_PRIORITY = 255


@dataclass(frozen=True)
class Outgoing:
    """A message to publish."""

    queue: str
    body: bytes
    priority: int = 0
    not_before: float | None = None
    """Unix time before which the message is not delivered (countdown/eta)."""
    message: Any = field(default=None, compare=False, repr=False)
    """The `Message` encoded in `body`, for `after_task_publish` receivers; brokers ignore it."""


@dataclass(slots=True)  # not frozen: one is made per task, and a frozen __init__ costs four times more
class Delivery:
    """A message handed to a consumer under a lease."""

    queue: str
    body: bytes
    tag: Any
    """The broker's handle on this delivery, lease token included."""
    attempts: int = 1
    """How many times this message has been delivered, this time included."""
    not_revoked: bool = False
    """True when the broker saw at fetch time that no revocation was live: `revoked()` need not be asked."""

    @property
    def redelivered(self) -> bool:
        return self.attempts > 1


@dataclass(frozen=True)
class DeadLetter:
    queue: str
    body: bytes
    reason: str
    failed_at: float


def check_priority(priority: int) -> int:
    if not 0 <= priority <= MAX_PRIORITY:
        raise ValueError(f"priority must be between 0 (highest) and {MAX_PRIORITY}, not {priority}")
    return priority


class Transport(ABC):
    """Holds messages; leases them to consumers. Thread-safe."""

    #: A lease lapses after `lease_seconds` without renewal, and the delivery goes to the next
    #: fetch. False where the store ties a delivery to its consumer's connection instead
    #: (RabbitMQ): it comes back when that connection closes, however long it was held.
    leases_lapse = True
    #: `fetch` over several queues takes the best priority across all of them (else: within each).
    exact_priority_across_queues = True
    #: `queue_sizes` counts delayed messages too (else: those ready and those leased here).
    sizes_count_delayed = True

    def __init__(self, url: str, options: Mapping[str, Any] | None = None) -> None:
        self.url = url
        self.options = dict(options or {})
        self.lease_seconds = float(self.options.get("lease_timeout", DEFAULT_LEASE_SECONDS))

    @abstractmethod
    def publish(self, messages: Sequence[Outgoing]) -> None:
        """Store messages atomically as one batch (one round trip where the store allows)."""

    @abstractmethod
    def fetch(self, queues: Sequence[str], limit: int, timeout: float) -> list[Delivery]:
        """Lease up to `limit` due messages from `queues`, highest priority first.

        Blocks up to `timeout` seconds while none is due, waking as soon as one
        is published or comes due. Returns an empty list on timeout.
        """

    @abstractmethod
    def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Remove delivered messages for good. Stale leases are ignored.

        May return before the store has done it (Redis sends acks without
        waiting, see `confirm`); a later call of the same thread sees its effect.
        """

    @abstractmethod
    def requeue(self, deliveries: Sequence[Delivery], delay: float = 0.0, *, redelivery: bool = False) -> None:
        """Give deliveries back: deliverable again after `delay` seconds, to any consumer.

        A plain give-back (shutdown, a rate limit) does not count as a
        delivery attempt; with `redelivery=True` (the process running it
        died) it does, so poison messages can be stopped.
        """

    @abstractmethod
    def renew(self, deliveries: Sequence[Delivery]) -> list[Delivery]:
        """Extend the leases; return the deliveries whose lease was already lost."""

    @abstractmethod
    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Move a delivery that can never be processed aside, with the reason."""

    @abstractmethod
    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The most recent dead letters, newest first."""

    @abstractmethod
    def requeue_dead_letters(self, limit: int) -> int:
        """Move up to `limit` dead letters, oldest first, back to their queues as new
        messages (default priority, attempts from zero), in one atomic step; return how many."""

    @abstractmethod
    def purge(self, queues: Sequence[str]) -> int:
        """Delete every message waiting in the queues; return how many."""

    @abstractmethod
    def queue_sizes(self, queues: Sequence[str] | None = None) -> dict[str, int]:
        """Messages held per queue (ready, delayed and leased); all queues when None."""

    def oldest_ages(self, queues: Sequence[str]) -> dict[str, float]:
        """Seconds the oldest message ready in each queue has waited, for the queues where this
        transport can tell (a dashboard's broker page); none by default."""
        return {}

    def confirm(self) -> None:  # noqa: B027 - only for brokers whose publish returns before the store replied
        """Wait until the store has taken every message this thread published; raise if it refused one.

        `publish` may return once a message is on its way (Redis pipelines
        single publishes across calls); callers that act on a publish having
        happened (a worker finishing a task that sent others, `get()` on a
        result) confirm first.
        """

    def qos(self, prefetch_count: int) -> None:  # noqa: B027 - only for brokers that push deliveries
        """The consumer of this process holds up to `prefetch_count` deliveries at once (a worker's
        prefetch window), though each `fetch` may ask for fewer. A broker that pushes deliveries
        (RabbitMQ) lets that many be unacknowledged; one that is asked (the others) needs nothing."""

    def interrupt(self) -> None:  # noqa: B027 - optional for brokers that never block long
        """Wake any `fetch` blocked in this process (used at shutdown)."""

    def close(self) -> None:  # noqa: B027
        """Release connections."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.display_url}>"

    @property
    def display_url(self) -> str:
        """The URL without its password, for logs and screens."""

        return redacted(self.url)


class WakeSignal(Protocol):
    """How an idle consumer waits for "something was published" (a socket, a pub/sub channel)."""

    def drain(self) -> None:
        """Forget signals already received."""

    def wait(self, timeout: float) -> object:
        """Sleep until signalled or `timeout` passes."""


def claim_or_wait(
    claim: Callable[[], tuple[list[Delivery], float | None]],
    signal: WakeSignal | None,
    timeout: float,
    polling_interval: float,
) -> list[Delivery]:
    """The consumer side every blocking broker shares: claim; if nothing, sleep until woken.

    Signals are drained *before* looking, so one sent after the look wakes the
    wait. `claim` returns what it leased and, when nothing, the time the
    earliest waiting message falls due; the sleep never passes that time nor
    the polling interval (the fallback should a signal be lost).
    """
    deadline = time.monotonic() + timeout
    while True:
        if signal is not None:
            signal.drain()
        taken, next_due = claim()
        remaining = deadline - time.monotonic()
        if taken or remaining <= 0:
            return taken
        wait = min(remaining, polling_interval)
        if next_due is not None:
            wait = min(wait, max(0.0, next_due - time.time()))
        if signal is not None:
            signal.wait(wait)
        else:
            time.sleep(wait)


def deadline_wait(deadline: float) -> float:
    """Seconds left until a monotonic deadline, never negative."""
    return max(0.0, deadline - time.monotonic())
