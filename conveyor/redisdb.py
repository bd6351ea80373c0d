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

import os
import threading
import weakref
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import redis

try:
    import hiredis
except ImportError:  # redis-py works without it, only slower
    hiredis = None  # type: ignore[assignment]
from redis.exceptions import NoScriptError

from conveyor.exceptions import ConveyorError, ImproperlyConfigured
from conveyor.threadend import when_thread_ends

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


class translate:  # noqa: N801 - used as a function: `with translate(...)`
    """Turn redis-py errors into Conveyor errors: connection problems into `connection_error`.

    A class, not a generator context manager: it wraps every hot-path call, and
    entering a generator costs several times more.
    """

    __slots__ = ("connection_error", "error", "where")

    def __init__(self, error: type[ConveyorError], connection_error: type[ConveyorError], where: str) -> None:
        self.error, self.connection_error, self.where = error, connection_error, where

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
            raise self.connection_error(f"{self.where}: {exc}") from exc
        if isinstance(exc, redis.RedisError):
            raise self.error(f"{self.where}: {exc}") from exc


class Scripts:
    """Lua scripts run by EVALSHA, loaded on demand (after a restart or SCRIPT FLUSH too).

    The hot paths (publish, fetch, ack, result writes) go straight to a
    connection of redis-py's pool that each thread keeps for itself: the
    client's per-command machinery (pool checkout, retry and observability
    wrappers) costs more than the round trip on loopback. redis-py's own
    Script objects would also check SCRIPT EXISTS before every pipeline;
    here a pipeline is one round trip and only a NOSCRIPT reply costs a reload.
    A cluster client keeps redis-py's routing: there, calls go one by one.
    """

    def __init__(self, client: Any, sources: Mapping[str, str]) -> None:
        import hashlib

        self.client = client
        self.sources = dict(sources)
        self.shas = {name: hashlib.sha1(source.encode()).hexdigest() for name, source in sources.items()}
        self.cluster = is_cluster(client)
        self._local = threading.local()
        self._held: weakref.WeakSet[_Held] = weakref.WeakSet()

    def load(self) -> None:
        for source in self.sources.values():
            self.client.script_load(source)

    def run(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """Run one script now."""
        return self.execute([("EVALSHA", self.shas[name], len(keys), *keys, *args)])[0]

    def batch(self) -> Batch:
        return Batch(self)

    def _connection(self) -> Any:
        """This thread's own connection (a new one in a forked child: sockets are not shared)."""
        held: _Held | None = getattr(self._local, "held", None)
        if held is None or held.pid != os.getpid():
            held = self._local.held = _Held(self.client.connection_pool)
            self._held.add(held)
        return held.connection

    def execute(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Send raw commands in one round trip; replies in order. A NOSCRIPT reply reloads and retries."""
        send = self._each_on_cluster if self.cluster else self._pipeline
        replies = send(commands)
        for index, (command, reply) in enumerate(zip(commands, replies)):
            if isinstance(reply, NoScriptError):
                self.load()
                replies[index] = reply = send([command])[0]
            if isinstance(reply, Exception):
                raise reply
        return replies

    def _pipeline(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        connection = self._connection()
        try:
            connection.send_packed_command(_pack(connection, commands), check_health=False)
            replies: list[Any] = []
            for _ in commands:
                try:
                    replies.append(connection.read_response())
                except redis.ResponseError as exc:  # a reply, not a broken connection: keep reading
                    replies.append(exc)
            return replies
        except BaseException:
            # A half-read pipeline leaves replies on the socket: never reuse it. The next
            # call checks out a fresh connection (the pool connects it, following a
            # Sentinel fail-over).
            self._drop(connection)
            raise

    def _drop(self, connection: Any) -> None:
        held = self._local.held
        self._local.held = None
        connection.disconnect()
        held.release()

    def _each_on_cluster(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """One by one through redis-py's cluster client, which routes each to its slot's node."""
        replies: list[Any] = []
        for command in commands:
            try:
                if command[0] == "EVALSHA":
                    replies.append(self.client.evalsha(*command[1:]))
                else:
                    replies.append(self.client.execute_command(*command))
            except redis.ResponseError as exc:
                replies.append(exc)
        return replies

    def close(self) -> None:
        for held in list(self._held):
            try:
                held.connection.disconnect()
            except Exception:  # already broken: nothing to close cleanly
                pass
            held.release()
        self._local = threading.local()


class _Held:
    """One thread's connection, checked out of the pool; given back when the thread ends
    (`threadend`), so short-lived producer threads do not each keep a connection open."""

    def __init__(self, pool: Any) -> None:
        self.pid = os.getpid()
        self.connection = pool.get_connection()
        self.release = when_thread_ends(pool.release, self.connection)


def _pack(connection: Any, commands: Sequence[tuple[Any, ...]]) -> Any:
    """RESP bytes for commands of str, bytes and numbers: hiredis packs each in C, where
    redis-py's packer first walks every argument in Python."""
    if hiredis is None:
        return connection.pack_commands(commands)
    return [b"".join([hiredis.pack_command(command) for command in commands])]


class Batch:
    """Scripts and raw commands sent as one pipeline (one round trip)."""

    def __init__(self, scripts: Scripts) -> None:
        self.scripts = scripts
        self.commands: list[tuple[Any, ...]] = []

    def script(self, name: str, keys: list[str], args: list[Any]) -> None:
        self.commands.append(("EVALSHA", self.scripts.shas[name], len(keys), *keys, *args))

    def command(self, *args: Any) -> None:
        """A raw command: `batch.command("SET", key, value, "PX", 1000)`."""
        self.commands.append(args)

    def execute(self) -> list[Any]:
        return self.scripts.execute(self.commands) if self.commands else []
