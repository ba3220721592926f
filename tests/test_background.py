"""tests.background and tests.waiting: a failure in a test's thread reaches the test."""

from __future__ import annotations

import threading

import pytest

from tests.background import Background, BackgroundFailed
from tests.waiting import wait_until


def test_an_assert_in_the_thread_is_raised_by_join_with_its_cause() -> None:
    def fails() -> None:
        assert 1 + 1 == 3, "arithmetic"

    thread = Background(fails, "failing").start()
    with pytest.raises(BackgroundFailed, match="failing") as info:
        thread.join(5)
    assert isinstance(info.value.__cause__, AssertionError) and "arithmetic" in str(info.value.__cause__)


def test_a_hung_thread_fails_the_join() -> None:
    release = threading.Event()

    def hang() -> None:
        release.wait(30)

    thread = Background(hang, "hanging").start()
    try:
        with pytest.raises(BackgroundFailed, match="did not end"):
            thread.join(0.1)
    finally:
        release.set()
    thread.join(5)  # ended cleanly now: nothing raised


def test_a_wait_stops_at_once_when_a_watched_thread_failed() -> None:
    thread = Background(lambda: (_ for _ in ()).throw(RuntimeError("feed died")), "feed").start()
    wait_until(lambda: not thread.alive(), 5, "the thread to end")
    with pytest.raises(BackgroundFailed, match="feed died"):
        wait_until(lambda: False, 60, "something the dead feed would have made true", watch=[thread])


def test_a_wait_names_what_it_waited_for() -> None:
    with pytest.raises(AssertionError, match="waiting for the impossible"):
        wait_until(lambda: False, 0.05, "the impossible", every=0.01)
    assert wait_until(lambda: 7, 1, "a value") == 7
