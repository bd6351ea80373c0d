"""A thread's resources are released when it ends, and never by a child forked from another thread."""

from __future__ import annotations

import os
import threading

from conveyor.threadend import when_thread_ends


def test_callback_runs_when_the_thread_ends_and_once() -> None:
    calls: list[str] = []

    def work() -> None:
        when_thread_ends(calls.append, "ended")
        early = when_thread_ends(calls.append, "released early")
        early()
        early()  # a finalizer runs once
        assert calls == ["released early"]

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert calls == ["released early", "ended"]


def test_a_child_forked_by_another_thread_does_not_run_it() -> None:
    read_end, write_end = os.pipe()
    pending = when_thread_ends(os.write, write_end, b"x")  # this (main) thread's, as a connection would be

    def fork_and_reap() -> None:
        child = os.fork()
        if child == 0:  # the main thread's local data is dropped here: the callback must stay silent
            os._exit(0)
        os.waitpid(child, 0)

    forker = threading.Thread(target=fork_and_reap)
    forker.start()
    forker.join()
    pending.detach()  # the main thread outlives the test: nothing left to run at exit
    os.close(write_end)
    assert os.read(read_end, 1) == b""  # nothing written: the child did not run it
    os.close(read_end)
