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

import logging
import time
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
from conveyor.pipelining import Pipelined, Window
from conveyor.urls import redacted

logger = logging.getLogger("conveyor.redis")

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
    if scheme != "unix":
        database = urlsplit(url).path.strip("/")
        if database and not database.isdigit():
            raise ImproperlyConfigured(
                f"{redacted(url)!r}: the database {database!r} is not a number (redis://host:6379/0)"
            )
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


class Scripts(Pipelined["_Link"]):
    """Lua scripts run by EVALSHA, loaded on demand (after a restart or SCRIPT FLUSH too).

    The hot paths (publish, fetch, ack, result writes) go straight to a
    connection of redis-py's pool that each thread keeps for itself: the
    client's per-command machinery (pool checkout, retry and observability
    wrappers) costs more than the round trip on loopback. redis-py's own
    Script objects would also check SCRIPT EXISTS before every pipeline;
    here a pipeline is one round trip and only a NOSCRIPT reply costs a reload.
    A cluster client keeps redis-py's routing: there, calls go one by one.

    `send` pipelines across calls: a command goes out and the call returns; its
    reply is read by a later call of the same thread, by `confirm`, or when the
    thread ends. A single-message publish then costs one socket write instead
    of a round trip.

    Until a send is confirmed, Redis may not have run it: a lost connection
    sends every unconfirmed command again on a new one (at-least-once: one
    that Redis ran before the loss runs twice). Confirm (`confirm`) before
    acting on a send's effect: a worker confirms a task's publishes before the
    task counts as done, `AsyncResult.get()` before it waits, and a thread's
    sends are confirmed when it ends (and the main thread's at exit).
    """

    def __init__(self, client: Any, sources: Mapping[str, str]) -> None:
        import hashlib

        super().__init__()
        self.client = client
        self.sources = dict(sources)
        self.shas = {name: hashlib.sha1(source.encode()).hexdigest() for name, source in sources.items()}
        self.cluster = is_cluster(client)

    def load(self) -> None:
        for source in self.sources.values():
            self.client.script_load(source)

    def run(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """Run one script now."""
        return self.execute([("EVALSHA", self.shas[name], len(keys), *keys, *args)])[0]

    def batch(self) -> Batch:
        return Batch(self)

    def new_window(self) -> _Link:
        return _Link(self.client.connection_pool)

    def execute(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Send raw commands in one round trip; replies in order. A NOSCRIPT reply reloads and retries."""
        if self.cluster:
            send = self._each_on_cluster
        else:
            link = self.window()
            if link.unconfirmed:
                self.settle(link, 0)  # their replies come first on the connection
            else:
                self._drop_if_closed(link)

            def send(commands: Sequence[tuple[Any, ...]]) -> list[Any]:
                return self._pipeline(link, commands)

        replies = send(commands)
        for index, (command, reply) in enumerate(zip(commands, replies)):
            if isinstance(reply, NoScriptError):
                self.load()
                replies[index] = reply = send([command])[0]
            if isinstance(reply, Exception):
                raise reply
        return replies

    def send(self, command: tuple[Any, ...]) -> None:
        """Send one command without waiting for its reply: replies are read later (see `confirm`).

        A thread sending back to back reads the replies that have arrived every
        READ_EVERY sends (one socket read for many), and waits once SEND_WINDOW
        are owed; one that sends after a pause first reads what it owes, which
        also finds a connection the server closed meanwhile. A reply that
        reports an error (other than NOSCRIPT, which reloads and sends again)
        is raised by the call that reads it, as `redis.ResponseError`, before
        its own command is sent (the caller may send it again).
        """
        if self.cluster:
            self.execute([command])
            return
        link = self.window()
        if link.unconfirmed:
            if time.monotonic() - link.last_sent > PAUSE_SECONDS:
                self.settle(link, 0)
            elif not self.make_room(link) and (len(link.unconfirmed) % READ_EVERY == 0 or link.lost_connection):
                # What has arrived, without waiting: a lost connection then sends few again.
                self.settle(link, None)
        if not link.unconfirmed:
            self._drop_if_closed(link)
        connection = link.connect()
        try:
            connection.send_packed_command(_pack(connection, [command]), check_health=False)
        except BaseException:
            link.drop()
            raise
        link.unconfirmed.append(command)
        link.sent_on = connection
        link.last_sent = time.monotonic()

    @staticmethod
    def _drop_if_closed(link: _Link) -> None:
        """Closed by the server (a restart, a Sentinel fail-over) while nothing was owed on it:
        a new connection loses nothing. Never send into a dead one (redis-py's pool makes the
        same check at every checkout)."""
        if link.connection is not None and not _usable(link.connection):
            link.drop()

    def settle(self, link: _Link, leave: int | None) -> None:
        """Read the replies owed until `leave` remain (None: those already here), after sending the
        commands again if their connection was lost; raise the first refusal among them."""
        connection = link.connect()
        try:
            if link.sent_on is not connection:
                self._send_again(link, connection)
            errors = self._read_replies(link, connection, leave)
        except BaseException:
            link.drop()
            raise
        _raise_refused(errors)

    def _send_again(self, link: _Link, connection: Any) -> None:
        """Send the unconfirmed commands again, after the connection they went out on was lost."""
        connection.send_packed_command(_pack(connection, list(link.unconfirmed)), check_health=False)
        link.sent_on = connection

    def _read_replies(self, link: _Link, connection: Any, leave: int | None) -> list[Exception]:
        """Read replies to unconfirmed sends until `leave` remain (None: those already here); the errors."""
        unconfirmed, errors = link.unconfirmed, []
        while unconfirmed and (len(unconfirmed) > leave if leave is not None else connection.can_read(timeout=0)):
            try:
                reply = connection.read_response()
            except redis.ResponseError as exc:  # a reply, not a broken connection
                reply = exc
            command = unconfirmed.popleft()
            if isinstance(reply, NoScriptError):
                self.load()
                connection.send_packed_command(_pack(connection, [command]), check_health=False)
                unconfirmed.append(command)
            elif isinstance(reply, Exception):
                errors.append(reply)
        return errors

    def settle_at_end(self, link: _Link) -> None:
        try:
            self.settle(link, 0)
        except redis.ConnectionError:
            self.settle(link, 0)  # once more, on a new connection

    def release(self, link: _Link) -> None:
        link.release()

    def _pipeline(self, link: _Link, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        connection = link.connect()
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
            link.drop()
            raise

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
        self.end_all()


#: A thread sending back to back reads the replies that have arrived after every this many sends.
READ_EVERY = 16
#: After this long without sending, a thread's next send first reads every reply it owes.
PAUSE_SECONDS = 0.05


def _usable(connection: Any) -> bool:
    """An idle connection is usable when nothing is waiting on it: readable means closed or out of step."""
    try:
        return not connection.can_read(timeout=0)
    except (redis.ConnectionError, OSError):
        return False


def _raise_refused(errors: list[Exception]) -> None:
    if errors:
        raise redis.ResponseError(
            f"Redis refused {len(errors)} command(s) sent without waiting for the reply: {errors[0]}"
        ) from errors[0]


class _Link(Window):
    """One thread's connection, checked out of the pool, and its unconfirmed sends.

    Ended with its thread (`Pipelined`): the sends are confirmed and the
    connection goes back, so short-lived producer threads neither lose a
    message nor each keep a connection open.
    """

    def __init__(self, pool: Any) -> None:
        super().__init__()
        self.pool = pool
        self.connection: Any = None
        self.sent_on: Any = None  # the connection the unconfirmed commands went out on
        self.last_sent = 0.0

    @property
    def lost_connection(self) -> bool:
        """Replies are owed on a connection since dropped: the commands must go again."""
        return bool(self.unconfirmed) and (self.sent_on is None or self.sent_on is not self.connection)

    def connect(self) -> Any:
        if self.connection is None:
            self.connection = self.pool.get_connection()
        return self.connection

    def drop(self) -> None:
        """Close a connection in an unknown state (a half-read reply); the next use takes a new one,
        and sends the unconfirmed commands again (the pool may hand back this same object, reconnected)."""
        connection, self.connection, self.sent_on = self.connection, None, None
        if connection is not None:
            try:
                connection.disconnect()
            finally:
                self.pool.release(connection)

    def release(self) -> None:
        connection, self.connection = self.connection, None
        if connection is not None:
            self.pool.release(connection)


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
