"""Test threads whose failures reach the test: an exception (an ``assert`` too) raised in a plain
``threading.Thread`` is printed and lost, and the test passes on whatever the thread left behind.

``Background(target).start()`` runs ``target`` in a daemon thread and keeps what it raised;
``check()`` re-raises it in the test (call it while the thread runs, e.g. inside a wait), ``join()``
waits for the end, fails when the thread hangs, and re-raises too.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class BackgroundFailed(AssertionError):
    """A background thread of the test raised; the original exception is the ``__cause__``."""


class Background:
    """One daemon thread running ``target``; its exception is kept for the test to raise."""

    def __init__(self, target: Callable[[], None], name: str) -> None:
        self.name = name
        self.error: BaseException | None = None
        self._target = target
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        try:
            self._target()
        except BaseException as exc:  # kept for check(); the thread ends here
            self.error = exc

    def start(self) -> Background:
        self._thread.start()
        return self

    def alive(self) -> bool:
        return self._thread.is_alive()

    def check(self) -> None:
        """Raise, in the caller, what the thread raised (nothing while it runs fine or ended cleanly)."""
        if self.error is not None:
            raise BackgroundFailed(f"the {self.name} thread failed: {self.error!r}") from self.error

    def join(self, timeout: float) -> None:
        """Wait up to ``timeout`` s for the thread to end; fail if it hangs or raised."""
        self._thread.join(timeout)
        self.check()
        if self._thread.is_alive():
            raise BackgroundFailed(f"the {self.name} thread did not end within {timeout:.0f} s")
