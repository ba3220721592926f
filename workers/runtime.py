"""Worker plumbing shared by every worker kind: a stop flag that signals set, and the loop around a step.

SIGTERM/SIGINT only *request* a stop: the loop finishes the batch in hand, and the worker's
``finally`` commits what is finished and closes its clients. An exception ends the loop at once and
propagates: nothing of the failed batch was committed, because workers store offsets only after the
effect is durable.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Final

from prometheus_client import CollectorRegistry, start_http_server

log = logging.getLogger(__name__)

STOP_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)
_Handler = Callable[[int, FrameType | None], object] | int | signal.Handlers | None


class StopFlag:
    """Set once to ask a worker to stop; ``wait`` doubles as an interruptible sleep."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason: str | None = None

    def set(self, reason: str = "requested") -> None:
        if not self._event.is_set():
            self.reason = reason
            self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` seconds; True as soon as the flag is set."""
        return self._event.wait(timeout)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        log.info("%s received: finishing the current batch, then stopping", name)
        self.set(name)


@contextlib.contextmanager
def stop_on_signals(stop: StopFlag, signals: Sequence[signal.Signals] = STOP_SIGNALS) -> Iterator[StopFlag]:
    """Install ``stop`` as the handler of ``signals`` for the block (main thread only), then restore."""
    previous: dict[signal.Signals, _Handler] = {}
    try:
        for sig in signals:
            previous[sig] = signal.signal(sig, stop._on_signal)
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_until_stopped(step: Callable[[], object], stop: StopFlag) -> int:
    """Call ``step`` until ``stop`` is set (checked between steps); returns the number of steps run.

    ``step`` must return within a bounded time (a batch closes on size or time).
    """
    steps = 0
    while not stop.is_set():
        step()
        steps += 1
    return steps


LOG_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str) -> None:
    """One log format for every worker process (stderr)."""
    logging.basicConfig(level=level, format=LOG_FORMAT)


def metrics_registry(port: int | None) -> CollectorRegistry:
    """A fresh registry, served on ``port`` (all interfaces, for Prometheus) when one is given."""
    registry = CollectorRegistry()
    if port is not None:
        start_http_server(port, registry=registry)
    return registry


def nice_threads(increment: int, *, keep: Collection[int] = ()) -> int:
    """Lower the CPU priority of this process's threads, except the native thread ids in ``keep``.

    On Linux niceness is per thread and new threads inherit their creator's: the threads running
    now are reniced one by one (``/proc/self/task``), and the threads they start later inherit it.
    Elsewhere the whole process is reniced (``keep`` cannot be honoured). Returns the threads changed.
    """
    tasks = Path("/proc/self/task")
    if not tasks.is_dir():  # pragma: no cover - not Linux
        os.nice(increment)
        return 0
    changed = 0
    for entry in tasks.iterdir():
        tid = int(entry.name)
        if tid in keep:
            continue
        try:
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + increment))
            changed += 1
        except (ProcessLookupError, PermissionError) as exc:  # the thread ended meanwhile
            log.debug("thread %d not reniced: %s", tid, exc)
    return changed
