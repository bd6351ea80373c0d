"""Redis connections for the Redis broker and result backend.

URLs, as a Celery user writes them, plus cluster schemes:

- `redis://[[user]:password@]host[:port][/db]`, `rediss://...` (TLS; query
  options such as `ssl_cert_reqs=required&ssl_ca_certs=/path/ca.pem`),
  `unix:///path/redis.sock?db=0&password=...`;
- `sentinel://[:password@]host:26379[;sentinel://host2:26379][/db]` with the
  transport option `master_name` (Celery's form); fail-over is followed by
  asking the sentinels for the current master on reconnect;
- `redis+cluster://host:port` (or `rediss+cluster://`): Redis Cluster. Every
  key of one queue carries the hash tag `{queue}`, so each script touches one
  slot and no command is CROSSSLOT.

Connection errors surface as `redis.ConnectionError`/`TimeoutError`; each
caller translates them with `translate()` into its own Conveyor error.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

from conveyor.exceptions import ConveyorError, ImproperlyConfigured

#: Seconds to wait for a TCP connection before the operation fails.
DEFAULT_CONNECT_TIMEOUT = 3.0

SCHEMES = ("redis", "rediss", "unix", "sentinel", "redis+cluster", "rediss+cluster")


def _import_redis() -> Any:
    try:
        import redis
    except ImportError:  # pragma: no cover - redis is a dependency
        raise ImproperlyConfigured("the Redis broker needs the 'redis' package: pip install 'redis[hiredis]'") from None
    return redis


def connect(url: str, options: Mapping[str, Any] | None = None) -> Any:
    """A redis-py client (Redis or RedisCluster) for a URL."""
    redis = _import_redis()
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    options = dict(options or {})
    scheme = urlsplit(url).scheme
    common: dict[str, Any] = {
        "socket_connect_timeout": float(options.get("socket_connect_timeout", DEFAULT_CONNECT_TIMEOUT)),
        "socket_keepalive": True,
        "health_check_interval": int(options.get("health_check_interval", 25)),
        # Conveyor retries at its own level (publish policy, worker backoff), visibly.
        "retry": Retry(NoBackoff(), 0),
    }
    if "socket_timeout" in options:
        common["socket_timeout"] = float(options["socket_timeout"])
    if scheme in ("redis+cluster", "rediss+cluster"):
        from redis.cluster import RedisCluster

        plain = url.replace("+cluster", "", 1)
        common.pop("health_check_interval")
        return RedisCluster.from_url(plain, **common)
    if scheme == "sentinel":
        return _sentinel_master(url, options, common)
    if scheme not in ("redis", "rediss", "unix"):
        raise ImproperlyConfigured(f"{url!r} is not a Redis URL (schemes: {', '.join(SCHEMES)})")
    return redis.Redis.from_url(url, **common)


def _sentinel_master(url: str, options: Mapping[str, Any], common: dict[str, Any]) -> Any:
    from redis.sentinel import Sentinel

    master_name = options.get("master_name")
    if not master_name:
        raise ImproperlyConfigured(f"{url!r}: a sentinel:// URL needs the transport option 'master_name'")
    hosts, password, db = [], None, 0
    for part in url.split(";"):
        parts = urlsplit(part.strip())
        hosts.append((parts.hostname or "127.0.0.1", parts.port or 26379))
        password = parts.password or password
        if parts.path.strip("/"):
            db = int(parts.path.strip("/"))
    sentinel = Sentinel(hosts, sentinel_kwargs=options.get("sentinel_kwargs") or {}, **common)  # type: ignore[no-untyped-call]
    return sentinel.master_for(master_name, password=password, db=db)  # type: ignore[no-untyped-call]


def is_cluster(client: Any) -> bool:
    from redis.cluster import RedisCluster

    return isinstance(client, RedisCluster)


@contextlib.contextmanager
def translate(error: type[ConveyorError], connection_error: type[ConveyorError], where: str) -> Iterator[None]:
    """Turn redis-py errors into Conveyor errors: connection problems into `connection_error`."""
    redis = _import_redis()
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise connection_error(f"{where}: {exc}") from exc
    except redis.RedisError as exc:
        raise error(f"{where}: {exc}") from exc
