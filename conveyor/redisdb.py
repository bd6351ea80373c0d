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

import redis

from conveyor.exceptions import ConveyorError, ImproperlyConfigured

#: Seconds to wait for a TCP connection before the operation fails.
DEFAULT_CONNECT_TIMEOUT = 3.0
#: Seconds a reply may take before the connection is considered dead.
DEFAULT_SOCKET_TIMEOUT = 30.0

SCHEMES = ("redis", "rediss", "unix", "sentinel", "redis+cluster", "rediss+cluster")


def connect(url: str, options: Mapping[str, Any] | None = None) -> Any:
    """A redis-py client (Redis or RedisCluster) for a URL."""
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
    # Longer than any blocking wait Conveyor issues (at most the polling interval).
    common["socket_timeout"] = float(options.get("socket_timeout", DEFAULT_SOCKET_TIMEOUT))
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
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise connection_error(f"{where}: {exc}") from exc
    except redis.RedisError as exc:
        raise error(f"{where}: {exc}") from exc


class Scripts:
    """Lua scripts run by EVALSHA, loaded on demand (after a restart or SCRIPT FLUSH too).

    redis-py's own Script objects check SCRIPT EXISTS before every pipeline,
    an extra round trip on the hot path; here a pipeline is one round trip and
    only a NOSCRIPT reply costs a reload.
    """

    def __init__(self, client: Any, sources: Mapping[str, str]) -> None:
        import hashlib

        self.client = client
        self.sources = dict(sources)
        self.shas = {name: hashlib.sha1(source.encode()).hexdigest() for name, source in sources.items()}

    def load(self) -> None:
        for source in self.sources.values():
            self.client.script_load(source)

    def run(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """Run one script now."""
        from redis.exceptions import NoScriptError

        try:
            return self.client.evalsha(self.shas[name], len(keys), *keys, *args)
        except NoScriptError:
            self.load()
            return self.client.evalsha(self.shas[name], len(keys), *keys, *args)

    def batch(self) -> Batch:
        return Batch(self)


class Batch:
    """Scripts and commands sent as one pipeline (one round trip)."""

    def __init__(self, scripts: Scripts) -> None:
        self.scripts = scripts
        # redis-py cannot pipeline scripts to a cluster: there, calls run one by one.
        self.cluster = is_cluster(scripts.client)
        self.pipe = None if self.cluster else scripts.client.pipeline(transaction=False)
        self.calls: list[tuple[str, list[str], list[Any]] | tuple[str, tuple[Any, ...]]] = []

    def script(self, name: str, keys: list[str], args: list[Any]) -> None:
        if self.pipe is not None:
            self.pipe.evalsha(self.scripts.shas[name], len(keys), *keys, *args)
        self.calls.append((name, keys, args))

    def command(self, method: str, *args: Any) -> None:
        if self.pipe is not None:
            getattr(self.pipe, method)(*args)
        self.calls.append((method, args))

    def execute(self) -> list[Any]:
        from redis.exceptions import NoScriptError

        if not self.calls:
            return []
        if self.pipe is None:
            return [
                self.scripts.run(*call) if len(call) == 3 else getattr(self.scripts.client, call[0])(*call[1])
                for call in self.calls
            ]
        results = list(self.pipe.execute(raise_on_error=False))
        for index, (call, result) in enumerate(zip(self.calls, results)):
            if isinstance(result, NoScriptError) and len(call) == 3:
                results[index] = self.scripts.run(*call)
            elif isinstance(result, Exception):
                raise result
        return results
