"""A daemon thread that keeps an in-memory view current: ``step()`` every ``interval_s``, at once again
while a step says more is waiting. A failing step (a state file being replaced, a disk error) is logged
and tried again after the interval: what the view held stays served meanwhile."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Self

__all__ = ["Follower"]

log = logging.getLogger(__name__)


class Follower:
    """``start()``, ``stop()``; or ``with Follower(...):``. ``step`` returns True when more is waiting."""

    def __init__(self, step: Callable[[], bool], interval_s: float, name: str) -> None:
        self.step = step
        self.interval_s = interval_s
        self.steps = 0
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> Self:
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                more = self.step()
                self.steps += 1
            except Exception:  # keep following: the view keeps what it had until a step succeeds
                self.failures += 1
                log.exception("%s: step failed; again in %.1f s", self._thread.name, self.interval_s)
                more = False
            if not more:
                self._stop.wait(self.interval_s)

    def stop(self, timeout: float = 5.0) -> None:
        """Idempotent; waits up to ``timeout`` for the step under way."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
