"""The worker loop's inbox (worker/inbox.py): in order, one handler at a time, inline when idle."""

from __future__ import annotations

import threading

from conveyor.worker.inbox import Inbox


def test_an_idle_inbox_lets_the_poster_handle_its_event() -> None:
    handled: list[tuple[str, str]] = []
    inbox: Inbox[str] = Inbox(lambda events: handled.extend((e, threading.current_thread().name) for e in events), 10)

    def post() -> None:
        assert inbox.post_or_handle("a")

    poster = threading.Thread(target=post, name="poster")
    poster.start()
    poster.join()
    assert handled == [("a", "poster")]
    assert inbox.empty() and not inbox.wait(0)


def test_with_events_queued_a_poster_queues_behind_them() -> None:
    handled: list[str] = []
    inbox: Inbox[str] = Inbox(handled.extend, 10)
    inbox.post("first")
    assert not inbox.post_or_handle("second")  # handling it now would overtake "first"
    assert handled == [] and inbox.wait(0)
    with inbox.taking() as batch:
        assert batch == ["first", "second"]


def test_a_batch_is_taken_at_most_max_batch_at_a_time_and_the_rest_rings_again() -> None:
    inbox: Inbox[int] = Inbox(lambda events: None, 3)
    for n in range(5):
        inbox.post(n)
    with inbox.taking() as batch:
        assert batch == [0, 1, 2]
    assert inbox.wait(0)
    with inbox.taking() as batch:
        assert batch == [3, 4]


def test_events_are_handled_in_posting_order_and_never_two_at_once() -> None:
    """Posters racing a loop: each poster's events are handled in the order it posted them,
    whether by itself or by the loop, and no two handlers ever overlap."""
    handled: list[tuple[int, int]] = []
    inside = threading.Lock()

    def handle(events: list[tuple[int, int]]) -> None:
        assert inside.acquire(blocking=False), "two handlers at once"
        handled.extend(events)
        inside.release()

    inbox: Inbox[tuple[int, int]] = Inbox(handle, 7)
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set() or not inbox.empty():
            inbox.wait(0.01)
            with inbox.taking() as batch:
                handle(batch)

    def poster(number: int) -> None:
        for sequence in range(3000):
            if sequence % 3:
                inbox.post_or_handle((number, sequence))
            else:
                inbox.post((number, sequence))

    loop_thread = threading.Thread(target=loop)
    loop_thread.start()
    posters = [threading.Thread(target=poster, args=(n,)) for n in range(3)]
    for thread in posters:
        thread.start()
    for thread in posters:
        thread.join()
    stop.set()
    loop_thread.join()
    for number in range(3):
        assert [s for n, s in handled if n == number] == list(range(3000))


def test_after_close_everything_is_queued_for_leftovers() -> None:
    handled: list[str] = []
    inbox: Inbox[str] = Inbox(handled.extend, 10)
    inbox.close()
    assert not inbox.post_or_handle("late")
    assert handled == [] and inbox.leftovers() == ["late"]
