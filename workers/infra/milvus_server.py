"""The embedded Milvus standalone server shipped in the PyPI ``milvus`` package (2.3.5-lite).

Each :class:`EmbeddedMilvus` owns its own ``milvus.MilvusServer`` (never the package's
module-level ``default_server`` singleton), so tests, the CLI and benchmarks can each run one
side by side, every one with its own base directory and proxy port. Quirks of the package that
this wrapper handles:

* ``MilvusServer.listen_port = P`` only changes the *default* of the port search: when P is
  busy the server silently comes up on P+1. We pass the port as an explicit config value,
  which makes a busy port an error instead.
* The internal ports (etcd, coordinators, nodes, metrics) are found by binding and releasing
  a socket just before the process starts, so two servers that start at the same instant can
  pick the same port; the loser exits at start-up and we retry once with fresh ports.
* ``MilvusServer.start`` changes the process working directory for a moment: starts are
  serialised with a lock.
* The embedded etcd ignores ``etcd.endpoints`` and always listens on 2379/2380: a second
  server dies at start-up ("bind: address already in use"). We give it an etcd config file
  with free ports. All other internal ports are picked by the OS, not probed upwards from
  Milvus' defaults (which made a second server squat on 19530).
* The package's free-port probe binds without SO_REUSEADDR, so a restart on the same port
  within a minute (TIME_WAIT) fails; ours sets it.
* Milvus' graceful shutdown hangs once data has been written (then, with its default
  ``gracefulStopTimeout`` of 1800 s, only SIGKILL ends it; idle servers stop in ~0.05 s).
  We set that timeout to 3 s: ``stop`` takes <= ~3 s, the exit code is -6 (Milvus aborts on
  its own timeout, harmless). Its etcd sessions then outlive it, so a restart on the same
  base directory waits for their leases: ~25 s with the 10 s lease we configure, ~55 s with
  Milvus' default 30 s. Data persists across such restarts.
* After a restart, loaded collections are reloaded in the background: call ``load`` again
  (it waits) before searching.
* Each base directory gets its own unpacked copy of the binaries (~7 s on the first start).
* The package writes ``/tmp/milvus/server_id_<pid>`` files whatever the base directory.
* Its vector library (knowhere) runs searches and index builds on threads named ``Knowhere_Search``
  and ``Knowhere_Build<N>`` that it starts at niceness 19, the lowest CPU priority: on a busy
  machine every other thread (inserts, the broker, the workers, training) ran before a search, and
  searches queued for hundreds of milliseconds behind work that had nothing to do with them.
  ``search_nice`` (``milvus.embedded_search_nice``, default 0) brings the search threads back to the
  priority of the rest of the server (:class:`workers.runtime.ThreadRenicer`; it needs CAP_SYS_NICE
  or RLIMIT_NICE, else a warning); builds stay at 19.
* Listeners: what its configuration can put on loopback is there. The embedded etcd (client and
  peer ports) listens on 127.0.0.1 (our ``embed-etcd.yaml``), every component advertises
  ``host`` (``*.ip``, 127.0.0.1 by default), the message queue (rocksmq) is in-process, and the
  internal-port probes bind 127.0.0.1. Milvus 2.3.5 itself binds its gRPC servers (proxy, its
  internal port, the coordinators and nodes) and its metrics/health HTTP server (``METRICS_PORT``)
  on every interface: the address is ``":<port>"`` in its code, not a setting (a listen address is
  an open request, milvus-io/milvus#26538), and a process cannot be confined to loopback without
  privileges (a network namespace or a firewall). ``start`` logs those ports
  (:meth:`EmbeddedMilvus.listeners`); the embedded server is for development machines, not shared
  hosts, and a host firewall should keep them closed. The production stack runs Milvus as a
  compose service that publishes no port.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import ipaddress
import logging
import signal
import subprocess
import threading
import time
import types
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Final, Self

import psutil
from pymilvus import MilvusClient, MilvusException

from workers.runtime import ThreadRenicer
from workers.settings import MilvusSettings

if TYPE_CHECKING:
    # The ``milvus`` package is the extra "embedded" (dev, tests), not in the production image:
    # imported only when an embedded server starts, so an external Milvus needs only pymilvus.
    from milvus import MilvusServer

__all__ = ["EmbeddedMilvus", "open_milvus"]

log = logging.getLogger(__name__)

_START_LOCK = threading.Lock()
_START_ATTEMPTS = 2
# Milvus' graceful shutdown often hangs once data was written; the process is then killed and its
# coordinator sessions stay in etcd until their lease expires: a restart on the same base dir
# waits for that (default TTL 30 s, ~55 s restarts). A shorter lease shortens that wait.
_SESSION_TTL_S = 10
SEARCH_THREADS: Final = ("Knowhere_Search",)  # names (prefixes) of the server's search threads
KNOWHERE_NICE: Final = 19  # the niceness knowhere gives its threads
_DEFAULT_SEARCH_NICE: Final[int] = MilvusSettings.model_fields["embedded_search_nice"].default


class _ExitedDuringStartup(RuntimeError):
    pass


def _own_session(module: object) -> None:
    """The package starts Milvus with a bare ``subprocess.Popen``: in the terminal's process group, so a
    Ctrl-C meant for ``mindstream up`` stopped Milvus while the workers still used it (and it aborted
    half-way, -6). Its module gets a ``subprocess`` whose ``Popen`` starts a new session: the owner stops
    Milvus itself, after its clients."""
    current = getattr(module, "subprocess", None)
    if isinstance(current, types.SimpleNamespace):
        return
    shim = types.SimpleNamespace(
        Popen=functools.partial(subprocess.Popen, start_new_session=True),
        TimeoutExpired=subprocess.TimeoutExpired,
        PIPE=subprocess.PIPE,
        DEVNULL=subprocess.DEVNULL,
        STDOUT=subprocess.STDOUT,
    )
    module.subprocess = shim  # type: ignore[attr-defined]


class EmbeddedMilvus:
    """One Milvus standalone process with its data under ``base_dir``, serving on ``host:port``.

    Use as a context manager (``with EmbeddedMilvus(dir, port) as server: server.uri``) or call
    :meth:`start` / :meth:`stop`. ``start`` returns once a ``MilvusClient`` can list collections.
    """

    def __init__(
        self,
        base_dir: Path,
        port: int = 19530,
        host: str = "127.0.0.1",
        start_timeout_s: float = 120.0,
        stop_timeout_s: float = 10.0,
        config: Mapping[str, bool | int | float | str] | None = None,
        search_nice: int = _DEFAULT_SEARCH_NICE,
    ) -> None:
        """``config``: milvus.yaml overrides (``MilvusSettings.embedded_config``); ``search_nice``: niceness of
        the search threads (``MilvusSettings.embedded_search_nice``; 19 = knowhere's own, left alone)."""
        if not 0 <= search_nice <= KNOWHERE_NICE:
            raise ValueError(f"search_nice must be a niceness in 0..19, got {search_nice}")
        self.config = dict(config or {})
        self.search_nice = search_nice
        self._renicer: ThreadRenicer | None = None
        self.base_dir = Path(base_dir).resolve()
        self.port = port
        self.host = host
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self._server: MilvusServer | None = None

    @property
    def uri(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        proc = self._process()
        return proc.pid if proc is not None else None

    @property
    def running(self) -> bool:
        proc = self._process()
        return proc is not None and proc.poll() is None

    @property
    def log_dir(self) -> Path:
        return self.base_dir / "logs"

    def ports(self) -> dict[str, int]:
        """The running server's ports by name: the package's ``*_port`` items (``proxy_port``,
        ``etcd_port``, the coordinators' and nodes'), ``metrics`` (its HTTP server) and ``etcd_peer_port``."""
        if self._server is None:
            return {}
        config = self._server.config
        ports = {key: int(config.get(key)) for key in config.configurable_items if key.endswith("_port")}
        ports["metrics"] = int(self._server.webservice_port)
        ports["etcd_peer_port"] = int(config.etcd_peer_port)
        return ports

    def listeners(self) -> list[tuple[str, int]]:
        """(address, port) of every TCP socket the server process listens on; [] when not running."""
        pid = self.pid
        if pid is None:
            return []
        try:
            connections = psutil.Process(pid).net_connections(kind="inet")
        except psutil.Error:  # ended meanwhile
            return []
        return sorted({(c.laddr.ip, c.laddr.port) for c in connections if c.status == psutil.CONN_LISTEN})

    def _log_exposed(self) -> None:
        exposed = sorted({port for ip, port in self.listeners() if not ipaddress.ip_address(ip).is_loopback})
        if exposed:
            log.info(
                "embedded Milvus listens on every interface on ports %s (its gRPC and metrics servers: Milvus 2.3 "
                "has no listen address setting); keep them behind the host's firewall",
                exposed,
            )

    def start(self) -> str:
        """Start the server (no-op if running) and wait until it answers; return the URI."""
        if self.running:
            return self.uri
        began = time.monotonic()
        restarting = (self.base_dir / "data" / "etcd.data").exists()
        for attempt in range(1, _START_ATTEMPTS + 1):
            try:
                self._start_once()
                break
            except _ExitedDuringStartup as exc:  # e.g. another server took a port we had picked
                self._reap()
                if attempt == _START_ATTEMPTS:
                    raise RuntimeError(f"embedded Milvus failed to start: {exc}; {self._log_tail()}") from exc
                log.warning("embedded Milvus exited during start-up (%s); retrying", exc)
            except BaseException:  # busy proxy port, timeout, Ctrl-C: leave nothing behind
                self._reap()
                raise
        atexit.register(self.stop)  # an uncaught exception in the caller must not orphan the server
        self._wait_for_client(began + self.start_timeout_s)
        if self.search_nice != KNOWHERE_NICE and self.pid is not None:
            self._renicer = ThreadRenicer(self.pid, SEARCH_THREADS, self.search_nice)
        self._log_exposed()
        if restarting:
            # The previous process' etcd sessions (killed, see module doc) point at dead addresses
            # (internal ports change per start) until their lease expires; flushes fail until
            # then. Restarts usually take longer than that anyway (~25 s with a 10 s lease).
            time.sleep(max(0.0, began + _SESSION_TTL_S + 2 - time.monotonic()))
        log.info(
            "embedded Milvus up at %s (pid %s, data %s) in %.1f s",
            self.uri,
            self.pid,
            self.base_dir,
            time.monotonic() - began,
        )
        return self.uri

    def stop(self) -> None:
        """SIGTERM, wait up to ``stop_timeout_s`` for a clean shutdown, then SIGKILL. Idempotent."""
        proc = self._process()
        if proc is None:
            return
        began = time.monotonic()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                log.warning(
                    "embedded Milvus (pid %d) ignored SIGTERM for %.0f s; killing",
                    proc.pid,
                    self.stop_timeout_s,
                )
                proc.kill()
                proc.wait(timeout=10)
        self._reap()
        log.info(
            "embedded Milvus at %s stopped in %.1f s (exit %s)",
            self.uri,
            time.monotonic() - began,
            proc.returncode,
        )

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _process(self) -> subprocess.Popen[bytes] | None:
        if self._server is None:
            return None
        proc: subprocess.Popen[bytes] | None = self._server.server_proc
        return proc

    def _start_once(self) -> None:
        import milvus
        from milvus import MilvusServer

        _own_session(milvus)

        from workers.infra.milvus_config import EmbeddedConfig

        config = EmbeddedConfig(
            self.base_dir, self.port, self.host, session_ttl_s=_SESSION_TTL_S, overrides=self.config
        )
        server = MilvusServer(config, wait_for_started=False)
        self._server = server
        log.info("starting embedded Milvus at %s with data under %s", self.uri, self.base_dir)
        with _START_LOCK:
            server.start()
        self._wait_healthy(server, time.monotonic() + self.start_timeout_s)

    def _wait_healthy(self, server: MilvusServer, deadline: float) -> None:
        """Poll ``/healthz`` on the metrics port; fail fast if the process exits."""
        url = f"http://127.0.0.1:{server.webservice_port}/healthz"
        while time.monotonic() < deadline:
            if not self.running:
                raise _ExitedDuringStartup(f"process exited with code {self._exit_code()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if b"OK" in resp.read():
                        return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.1)
        raise TimeoutError(f"embedded Milvus not healthy after {self.start_timeout_s:.0f} s")

    def _exit_code(self) -> int | None:
        proc = self._process()
        return proc.returncode if proc is not None else None

    def _wait_for_client(self, deadline: float) -> None:
        last_error: Exception | None = None
        while time.monotonic() < deadline and self.running:
            client = None
            try:
                client = MilvusClient(uri=self.uri, timeout=5.0)
                client.list_collections()
                return
            except (MilvusException, OSError) as exc:  # not ready yet
                last_error = exc
                time.sleep(0.2)
            finally:
                if client is not None:
                    client.close()
        self.stop()
        raise TimeoutError(f"embedded Milvus at {self.uri} never answered: {last_error}; {self._log_tail()}")

    def _reap(self) -> None:
        """Kill a left-over process, close the package's log files and forget the server."""
        if self._renicer is not None:
            self._renicer.stop()
            self._renicer = None
        if self._server is None:
            return
        proc = self._process()
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        self._server.stop()  # closes the stdout/stderr log files; the process is already gone
        self._server = None
        atexit.unregister(self.stop)

    def _log_tail(self, lines: int = 20) -> str:
        path = self.log_dir / "milvus-stderr.log"
        if not path.exists():
            return "no stderr log"
        tail = path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
        return f"stderr tail ({path}):\n" + "\n".join(tail)


def embedded_server(settings: MilvusSettings, base_dir: Path) -> EmbeddedMilvus:
    """The embedded server ``settings`` describe (not started): its address, milvus.yaml keys, search niceness."""
    return EmbeddedMilvus(
        base_dir,
        port=settings.embedded_port,
        host=settings.embedded_host,
        config=settings.embedded_config,
        search_nice=settings.embedded_search_nice,
    )


@contextlib.contextmanager
def _embedded_uri(settings: MilvusSettings, base_dir: Path) -> Iterator[str]:
    with embedded_server(settings, base_dir) as server:
        yield server.uri


def open_milvus(settings: MilvusSettings, base_dir: Path) -> contextlib.AbstractContextManager[str]:
    """Yield a Milvus URI: ``settings.uri`` when set (external Milvus), else an embedded server."""
    if settings.uri:
        log.info("using external Milvus at %s", settings.uri)
        return contextlib.nullcontext(settings.uri)
    return _embedded_uri(settings, base_dir)
