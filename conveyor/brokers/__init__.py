"""Brokers by URL scheme: each opens a transport (the queues) and a state store (what workers
share besides messages). Each implementation is imported only when used."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from conveyor.brokers.base import DeadLetter, Delivery, Outgoing, Transport
from conveyor.brokers.state import StateStore
from conveyor.exceptions import BrokerError, ImproperlyConfigured
from conveyor.extras import requires
from conveyor.urls import checked


class Broker(NamedTuple):
    """What a broker URL opens: the transport and the state store beside it."""

    transport: Transport
    state: StateStore

    def close(self) -> None:
        self.transport.close()
        self.state.close()


def _memory(url: str, options: Mapping[str, Any]) -> Broker:
    from conveyor.brokers.memory import MemoryTransport
    from conveyor.brokers.memory_state import MemoryStateStore

    transport = MemoryTransport(url, options)
    return Broker(transport, MemoryStateStore(transport.store))


def _sqlite(url: str, options: Mapping[str, Any]) -> Broker:
    from conveyor.brokers.sqlite import SQLiteTransport
    from conveyor.brokers.sqlite_state import SQLiteStateStore
    from conveyor.sqlitedb import EVENTS_SCHEMA, open_disposable

    transport = SQLiteTransport(url, options)
    events = open_disposable(transport.db.path + "-events", BrokerError, EVENTS_SCHEMA)
    return Broker(transport, SQLiteStateStore(transport.db, events))


def _redis(url: str, options: Mapping[str, Any]) -> Broker:
    with requires("redis", "the Redis broker"):
        from conveyor.brokers.redis import RedisTransport
        from conveyor.brokers.redis_state import RedisStateStore

    transport = RedisTransport(url, options)
    return Broker(transport, RedisStateStore(transport.redis))


def _amqp(url: str, options: Mapping[str, Any]) -> Broker:
    with requires("amqp", "the RabbitMQ broker"):
        from conveyor.brokers.amqp import DEFAULT_STATE_URL, AMQPTransport

    # RabbitMQ keeps the messages; revocations, rate limits and the rest live in the store state_url names.
    state_url = str(options.get("state_url") or DEFAULT_STATE_URL)
    state = open_broker(state_url, options.get("state_transport_options")).state
    return Broker(AMQPTransport(url, options, state), state)


#: RabbitMQ, as Celery users write it (kombu's transports by those names are all AMQP 0-9-1).
AMQP_SCHEMES = ("amqp", "amqps", "pyamqp", "librabbitmq")

SCHEMES: dict[str, Callable[[str, Mapping[str, Any]], Broker]] = {
    "memory": _memory,
    "sqlite": _sqlite,
    **dict.fromkeys(AMQP_SCHEMES, _amqp),
    **dict.fromkeys(("redis", "rediss", "unix", "sentinel", "redis+cluster", "rediss+cluster"), _redis),
}


def open_broker(url: str, options: Mapping[str, Any] | None = None) -> Broker:
    """Open the transport and state store a URL names (`sqlite:///conveyor.db`, `memory://`, ...)."""
    scheme = urlsplit(checked(url, "broker_url")).scheme
    factory = SCHEMES.get(scheme)
    if factory is None:
        known = ", ".join(f"{s}://" for s in sorted(SCHEMES))
        raise ImproperlyConfigured(f"broker_url {url!r}: unsupported scheme {scheme!r} (supported: {known})")
    return factory(url, options or {})


__all__ = [
    "AMQP_SCHEMES", "SCHEMES", "Broker", "DeadLetter", "Delivery", "Outgoing", "StateStore", "Transport",
    "open_broker",
]  # fmt: skip
