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
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server

from workers.settings import Settings

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


def metrics_registry(port: int | None, host: str | None = None) -> CollectorRegistry:
    """A fresh registry, served on ``host:port`` (:func:`serve_metrics`) when a port is given."""
    registry = CollectorRegistry()
    if port is not None:
        serve_metrics(registry, port, host)
    return registry


def serve_metrics(registry: CollectorRegistry, port: int, host: str | None = None) -> WSGIServer:
    """Serve ``registry`` at ``http://host:port/metrics`` (a daemon thread) and return the server.

    ``host``: ``settings.metrics_host``, loopback unless configured (0.0.0.0 where Prometheus scrapes
    from another container); None = that setting as the environment gives it."""
    if host is None:
        host = Settings().metrics_host
    server, _ = start_http_server(port, addr=host, registry=registry)
    log.info("metrics on http://%s:%d/metrics", host, port)
    return server


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


def renice_named_threads(pid: int, prefixes: Sequence[str], nice: int) -> tuple[int, int]:
    """Set the niceness of ``pid``'s threads whose name (``/proc/<pid>/task/<tid>/comm``) starts with one of
    ``prefixes`` to ``nice``. Returns (threads changed, threads refused): lowering a niceness needs
    ``CAP_SYS_NICE`` or a ``RLIMIT_NICE`` that allows it (``ulimit -e``). (0, 0) where there is no ``/proc``
    (not Linux) or the process is gone."""
    changed = refused = 0
    try:
        entries = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:  # not Linux, or the process ended
        return 0, 0
    for entry in entries:
        try:
            name = (entry / "comm").read_text(encoding="utf-8", errors="replace").strip()
            if not name.startswith(tuple(prefixes)):
                continue
            tid = int(entry.name)
            if os.getpriority(os.PRIO_PROCESS, tid) != nice:
                os.setpriority(os.PRIO_PROCESS, tid, nice)
                changed += 1
        except PermissionError:
            refused += 1
        except (OSError, ValueError) as exc:  # the thread ended meanwhile
            log.debug("thread %s of %d not reniced: %s", entry.name, pid, exc)
    return changed, refused


class ThreadRenicer:
    """Keeps ``pid``'s threads named ``prefixes*`` at niceness ``nice``: now, then every ``every_s`` (a pool
    starts its threads when first used, and may start more). A refusal (no privilege to lower a niceness)
    is logged once, with the remedy. ``stop()`` ends the watcher."""

    def __init__(self, pid: int, prefixes: Sequence[str], nice: int, every_s: float = 2.0) -> None:
        self.pid, self.prefixes, self.nice, self.every_s = pid, tuple(prefixes), nice, every_s
        self._warned = False
        self._stop = threading.Event()
        self.check()
        self._thread = threading.Thread(target=self._loop, name=f"renice-{pid}", daemon=True)
        self._thread.start()

    def check(self) -> None:
        _, refused = renice_named_threads(self.pid, self.prefixes, self.nice)
        if refused and not self._warned:
            self._warned = True
            log.warning(
                "could not set %d thread(s) %s* of pid %d to niceness %d: lowering a niceness needs CAP_SYS_NICE "
                "or RLIMIT_NICE (e.g. `ulimit -e 20` in the shell that starts it); they keep their own",
                refused,
                "*, ".join(self.prefixes),
                self.pid,
                self.nice,
            )

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            if not Path(f"/proc/{self.pid}").exists():
                return
            self.check()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.every_s + 1)
