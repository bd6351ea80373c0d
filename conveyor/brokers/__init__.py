"""Brokers by URL scheme. Each implementation is imported only when used."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from conveyor.brokers.base import Broker, DeadLetter, Delivery, Outgoing
from conveyor.exceptions import ImproperlyConfigured
from conveyor.extras import requires
from conveyor.urls import checked


def _memory(url: str, options: Mapping[str, Any]) -> Broker:
    from conveyor.brokers.memory import MemoryBroker

    return MemoryBroker(url, options)


def _sqlite(url: str, options: Mapping[str, Any]) -> Broker:
    from conveyor.brokers.sqlite import SQLiteBroker

    return SQLiteBroker(url, options)


def _redis(url: str, options: Mapping[str, Any]) -> Broker:
    with requires("redis", "the Redis broker"):
        from conveyor.brokers.redis import RedisBroker

    return RedisBroker(url, options)


def _amqp(url: str, options: Mapping[str, Any]) -> Broker:
    with requires("amqp", "the RabbitMQ broker"):
        from conveyor.brokers.amqp import DEFAULT_STATE_URL, AMQPBroker

    # RabbitMQ keeps the messages; revocations, rate limits and the rest live in the store state_url names.
    state = broker_from_url(str(options.get("state_url") or DEFAULT_STATE_URL), options.get("state_transport_options"))
    return AMQPBroker(url, options, state)


#: RabbitMQ, as Celery users write it (kombu's transports by those names are all AMQP 0-9-1).
AMQP_SCHEMES = ("amqp", "amqps", "pyamqp", "librabbitmq")

SCHEMES: dict[str, Callable[[str, Mapping[str, Any]], Broker]] = {
    "memory": _memory,
    "sqlite": _sqlite,
    **dict.fromkeys(AMQP_SCHEMES, _amqp),
    **dict.fromkeys(("redis", "rediss", "unix", "sentinel", "redis+cluster", "rediss+cluster"), _redis),
}


def broker_from_url(url: str, options: Mapping[str, Any] | None = None) -> Broker:
    """Create the broker a URL names (`sqlite:///conveyor.db`, `memory://`, ...)."""
    scheme = urlsplit(checked(url, "broker_url")).scheme
    factory = SCHEMES.get(scheme)
    if factory is None:
        known = ", ".join(f"{s}://" for s in sorted(SCHEMES))
        raise ImproperlyConfigured(f"broker_url {url!r}: unsupported scheme {scheme!r} (supported: {known})")
    return factory(url, options or {})


__all__ = ["AMQP_SCHEMES", "SCHEMES", "Broker", "DeadLetter", "Delivery", "Outgoing", "broker_from_url"]
