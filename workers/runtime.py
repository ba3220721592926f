"""Worker plumbing shared by every worker kind: a stop flag that signals set, and the loop around a step.

SIGTERM/SIGINT only *request* a stop: the loop finishes the batch in hand, and the worker's
``finally`` commits what is finished and closes its clients. An exception ends the loop at once and
propagates: nothing of the failed batch was committed, because workers store offsets only after the
effect is durable.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, Final
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

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


class Health:
    """Liveness and readiness of this process, served as ``/healthz`` and ``/readyz`` beside ``/metrics``.

    Live: the worker's loop beats (:meth:`beat`) at least every ``timeout_s``; before its first beat
    the process is starting and counts as live (a loop that has not started cannot be stuck). Ready:
    the worker said so (:meth:`set_ready`) and it is live. Thread-safe; ``clock`` is injectable."""

    def __init__(self, timeout_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.timeout_s = timeout_s
        self._clock = clock
        self._lock = threading.Lock()
        self._beat: float | None = None
        self._ready = False
        self._reason = "starting"

    def beat(self) -> None:
        """The loop is alive (call once per step)."""
        now = self._clock()
        with self._lock:
            self._beat = now

    def set_ready(self, ready: bool = True, reason: str = "") -> None:
        """Ready (clients connected, serving) or not, with the reason ``/readyz`` gives."""
        with self._lock:
            self._ready = ready
            self._reason = "" if ready else (reason or "not ready")

    def live(self) -> tuple[bool, dict[str, Any]]:
        """(live, the JSON body of ``/healthz``)."""
        with self._lock:
            beat = self._beat
        if beat is None:
            return True, {"status": "starting", "heartbeat_age_s": None, "timeout_s": self.timeout_s}
        age = max(self._clock() - beat, 0.0)
        ok = age <= self.timeout_s
        return ok, {"status": "ok" if ok else "stale", "heartbeat_age_s": round(age, 3), "timeout_s": self.timeout_s}

    def ready(self) -> tuple[bool, dict[str, Any]]:
        """(ready, the JSON body of ``/readyz``): ready and live."""
        live, body = self.live()
        with self._lock:
            ready, reason = self._ready, self._reason
        if ready and not live:
            ready, reason = False, f"loop stale: no heartbeat for {body['heartbeat_age_s']}s"
        return ready, {"status": "ready" if ready else "not ready", "reason": reason or None}


_process_health: Health | None = None
_process_health_lock = threading.Lock()


def process_health() -> Health:
    """This process's :class:`Health` (one per process, as its signals and its metrics server),
    built on first use with ``settings.heartbeat_timeout_s``."""
    global _process_health
    with _process_health_lock:
        if _process_health is None:
            _process_health = Health(Settings().heartbeat_timeout_s)
        return _process_health


def beat() -> None:
    """The process's loop is alive: what :func:`run_until_stopped` calls after every step; a loop of its own
    (the refresh worker's) calls it once per iteration."""
    process_health().beat()


def set_ready(ready: bool = True, reason: str = "") -> None:
    """Mark this process ready (its clients are connected) or not, for ``/readyz``."""
    process_health().set_ready(ready, reason)


def run_until_stopped(step: Callable[[], object], stop: StopFlag, health: Health | None = None) -> int:
    """Call ``step`` until ``stop`` is set (checked between steps); returns the number of steps run.

    ``step`` must return within a bounded time (a batch closes on size or time). The loop beats
    ``health`` (default: the process's) before the first step and after each one, and marks it ready
    after the first step returned: the worker's clients were built and one batch went through them
    (a worker that knows better calls :func:`set_ready` itself).
    """
    health = health if health is not None else process_health()
    health.beat()
    steps = 0
    while not stop.is_set():
        step()
        steps += 1
        health.beat()
        if steps == 1:
            health.set_ready()
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


_StartResponse = Callable[[str, list[tuple[str, str]]], object]
_WsgiApp = Callable[[dict[str, Any], _StartResponse], Iterable[bytes]]


def worker_app(registry: CollectorRegistry, health: Health) -> _WsgiApp:
    """WSGI app: ``/healthz`` and ``/readyz`` from ``health`` (200 or 503, JSON), anything else the
    Prometheus exposition of ``registry`` (as prometheus_client serves it)."""
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: _StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/healthz":
            ok, body = health.live()
        elif path == "/readyz":
            ok, body = health.ready()
        else:
            return metrics(environ, start_response)
        data = (json.dumps(body) + "\n").encode()
        start_response(
            "200 OK" if ok else "503 Service Unavailable",
            [("Content-Type", "application/json"), ("Content-Length", str(len(data))), ("Cache-Control", "no-store")],
        )
        return [data]

    return app


class _ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No access log: Prometheus and the health probes call every few seconds."""


def serve_metrics(
    registry: CollectorRegistry, port: int, host: str | None = None, health: Health | None = None
) -> WSGIServer:
    """Serve ``registry`` at ``http://host:port/metrics`` and ``health`` at ``/healthz`` and ``/readyz``
    (:func:`worker_app`; a daemon thread) and return the server (``shutdown()``, ``server_close()``).

    ``host``: ``settings.metrics_host``, loopback unless configured (0.0.0.0 where Prometheus scrapes
    from another container); None = that setting as the environment gives it. ``health``: None = the
    process's (:func:`process_health`)."""
    if host is None:
        host = Settings().metrics_host
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    server_class = type("_Server", (_ThreadingServer,), {"address_family": family})
    app = worker_app(registry, health if health is not None else process_health())
    server: WSGIServer = make_server(host, port, app, server_class=server_class, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name=f"metrics-{port}", daemon=True).start()
    log.info("metrics on http://%s:%d/metrics (and /healthz, /readyz)", host, port)
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
