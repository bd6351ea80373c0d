"""Wake-up signals between processes on one host, for the SQLite store.

SQLite cannot notify anyone of a commit, so a process about to wait (an idle
worker, a caller in `AsyncResult.get`) binds a Unix datagram socket in a
directory shared by everyone using the same database file, and whoever commits
something worth waking for sends one byte to every socket there. Waiters still
re-check the database after a timeout, so a lost signal costs latency, never
correctness; where Unix sockets are unavailable, waiting degrades to polling.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import select
import socket
import tempfile
import uuid
import weakref

_HAVE_UNIX = hasattr(socket, "AF_UNIX")


def channel_directory(database_path: str, channel: str) -> str:
    """The socket directory of one channel of a database file.

    It lives under the temp directory, named by a hash of the database's real
    path, because a socket path must stay under ~100 bytes.
    """
    digest = hashlib.sha1(os.path.realpath(database_path).encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), f"conveyor-{digest}", channel)


def _release(sock: socket.socket, path: str) -> None:
    sock.close()
    with contextlib.suppress(OSError):
        os.unlink(path)


class Listener:
    """A bound socket to wait on. Bind before checking the database, then wait."""

    def __init__(self, directory: str) -> None:
        self.path: str | None = None
        self.sock: socket.socket | None = None
        if not _HAVE_UNIX:
            return
        os.makedirs(directory, exist_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        path = os.path.join(directory, f"{os.getpid()}-{uuid.uuid4().hex[:8]}")
        sock.bind(path)
        sock.setblocking(False)
        self.sock, self.path = sock, path
        # One never closed (its app was not) gives its socket and its file back when collected.
        self._release = weakref.finalize(self, _release, sock, path)

    def wait(self, timeout: float) -> bool:
        """Sleep until signalled or `timeout` passes; True when signalled."""
        if self.sock is None:
            select.select([], [], [], timeout)
            return False
        readable, _, _ = select.select([self.sock], [], [], max(0.0, timeout))
        if readable:
            self.drain()
        return bool(readable)

    def drain(self) -> None:
        """Discard pending signals (they all mean the same thing: look again)."""
        if self.sock is None:
            return
        with contextlib.suppress(OSError):
            while self.sock.recv(64):
                pass

    def close(self) -> None:
        if self.sock is not None:
            self._release()
            self.sock = self.path = None

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Listeners:
    """Several listeners waited on together (a consumer of several queues, each its own channel)."""

    def __init__(self, listeners: list[Listener]) -> None:
        self.listeners = listeners

    def wait(self, timeout: float) -> bool:
        socks = [listener.sock for listener in self.listeners if listener.sock is not None]
        if not socks:
            select.select([], [], [], max(0.0, timeout))
            return False
        readable, _, _ = select.select(socks, [], [], max(0.0, timeout))
        if readable:
            self.drain()
        return bool(readable)

    def drain(self) -> None:
        for listener in self.listeners:
            listener.drain()


def poke(listeners: list[Listener]) -> None:
    """Signal these listeners directly (to wake this process's own waits)."""
    if not _HAVE_UNIX:
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        for listener in listeners:
            if listener.path is not None:
                with contextlib.suppress(OSError):
                    sock.sendto(b"!", listener.path)


class Notifier:
    """Signals every listener of a channel directory."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) if _HAVE_UNIX else None
        if self._sock is not None:
            self._sock.setblocking(False)
            # One never closed (its app was not) gives its socket back when collected.
            self._release = weakref.finalize(self, self._sock.close)
        self._listing_mtime: int | None = None
        self._listing: list[str] = []

    def _targets(self) -> list[str]:
        # Re-list only when the directory changed: one stat per notify otherwise.
        try:
            mtime = os.stat(self.directory).st_mtime_ns
        except FileNotFoundError:
            return []
        if mtime != self._listing_mtime:
            self._listing = [os.path.join(self.directory, n) for n in os.listdir(self.directory)]
            self._listing_mtime = mtime
        return self._listing

    def notify(self) -> None:
        if self._sock is None:
            return
        for path in self._targets():
            try:
                self._sock.sendto(b"!", path)
            except BlockingIOError:
                pass  # its buffer is full of signals already: it will look again
            except (ConnectionRefusedError, FileNotFoundError):
                # A listener that died without cleaning up.
                with contextlib.suppress(OSError):
                    os.unlink(path)
                self._listing_mtime = None
            except OSError:
                pass

    def close(self) -> None:
        if self._sock is not None:
            self._release()
            self._sock = None
