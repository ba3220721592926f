"""Waiting for a condition with a deadline (never a fixed sleep followed by an assert)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Protocol, TypeVar

T = TypeVar("T")


class Checked(Protocol):
    def check(self) -> None: ...


def wait_until(
    predicate: Callable[[], T], timeout: float, what: str, every: float = 0.1, watch: Iterable[Checked] = ()
) -> T:
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` after ``timeout``, or at once
    with what a thread of ``watch`` (e.g. a :class:`tests.background.Background` feeding the test) raised."""
    deadline = time.monotonic() + timeout
    while True:
        for thread in watch:
            thread.check()
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)
