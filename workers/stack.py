"""The one way to start the live system: ``with Stack(settings, workers) as stack:``.

The embedded Apache Kafka broker and embedded Milvus when the settings name none (else the configured
ones), the stack's topics, then the chosen workers as subprocesses (``python -m workers.cli <name>``)
through :class:`~workers.supervisor.Supervisor`, each configured only by the environment
:meth:`Settings.to_env` renders, each with its own log. ``mindstream up``, the benchmarks and the fault
tests all start it so, so what is measured and tested is what users run.

Ready means one thing: the worker's ``/readyz`` answers 200 (the gateway's on its HTTP port, every other
worker's beside its ``/metrics``; a worker whose ``metrics_port`` is unset gets one from ``metrics_ports``,
else a free port). The refresh worker is ready once a model is live, the others after their first batch.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self, get_args

from workers.infra.kafka_broker import KafkaCluster, embedded_cluster
from workers.infra.milvus_server import EmbeddedMilvus, embedded_server
from workers.infra.ports import free_port
from workers.infra.topics import ensure_stack_topics
from workers.settings import ANY_ADDRESS, ENV_PREFIX, MetricsWorker, Settings
from workers.supervisor import Child, Supervisor

log = logging.getLogger(__name__)

# start order: the catalogue worker applies the items topic that recall and the gateway follow
WORKERS = ("refresh", "ingest", "catalogue", "recall", "gateway")
METRICS_WORKERS: tuple[str, ...] = get_args(MetricsWorker)  # /metrics and /readyz on <section>.metrics_port


class WorkerExited(RuntimeError):
    """A worker of the stack exited when it should be running."""


class Stack:
    """Broker, Milvus, topics and ``workers``, started on ``__enter__`` (ready unless ``wait_ready=False``),
    stopped on ``__exit__`` in the reverse order. ``settings`` then holds what the workers were given:
    the broker's bootstrap servers, Milvus' URI, every metrics port."""

    def __init__(
        self,
        settings: Settings,
        workers: Sequence[str] = WORKERS,
        *,
        logs_dir: Path | None = None,
        metrics_ports: Mapping[MetricsWorker, int] | None = None,
        wait_ready: bool = True,
        ready_timeout_s: float | None = None,
        stop_timeout_s: float | None = None,
        needs_kafka: bool = True,
        needs_milvus: bool = True,
    ) -> None:
        self.settings = settings.model_copy(update=_absolute_paths(settings))
        self.workers = tuple(workers)
        self.logs_dir = logs_dir if logs_dir is not None else self.settings.state_dir / "logs"
        self.metrics_ports = {str(name): port for name, port in (metrics_ports or {}).items()}
        launch = self.settings.supervisor
        self.ready_timeout_s = launch.ready_timeout_s if ready_timeout_s is None else ready_timeout_s
        self.stop_timeout_s = launch.stop_timeout_s if stop_timeout_s is None else stop_timeout_s
        self._wait_ready = wait_ready
        # False: the workers started never touch it (a gateway alone: no broker; ingest alone: no Milvus)
        self._needs_kafka, self._needs_milvus = needs_kafka, needs_milvus
        self.broker: KafkaCluster | None = None  # the embedded ones, when this stack started them
        self.milvus: EmbeddedMilvus | None = None
        self.supervisor = Supervisor([], self.settings.supervisor)
        self.env: dict[str, str] = {}
        self._kinds: dict[str, str] = {}  # worker name -> its kind (ingest, recall ...) when they differ
        self._exit = contextlib.ExitStack()

    # -- lifecycle ----------------------------------------------------------------------------------

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def start(self) -> None:
        """Broker, Milvus, topics, then the workers (and, unless told otherwise, until they are ready)."""
        settings = self.settings
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        kafka, milvus = settings.kafka, settings.milvus
        if not kafka.bootstrap_servers and self._needs_kafka:
            self.broker = self._exit.enter_context(embedded_cluster(kafka, settings.kafka_dir))
            kafka = kafka.model_copy(update={"bootstrap_servers": self.broker.bootstrap})
        if not milvus.uri and self._needs_milvus:
            self.milvus = self._exit.enter_context(embedded_server(milvus, settings.milvus_dir))
            milvus = milvus.model_copy(update={"uri": self.milvus.uri})
        if kafka.bootstrap_servers:
            ensure_stack_topics(kafka.client_config(), kafka)
        update: dict[str, object] = {"kafka": kafka, "milvus": milvus}
        for name in METRICS_WORKERS:
            section = getattr(settings, name)
            if section.metrics_port is None:
                port = self.metrics_ports.get(name) or free_port()
                update[name] = section.model_copy(update={"metrics_port": port})
        self.settings = settings.model_copy(update=update)
        # nothing MINDSTREAM_* of this process leaks past the settings: they are the whole configuration
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)} | self.settings.to_env()
        self._exit.callback(self.supervisor.stop, self.stop_timeout_s)
        for name in self.workers:
            self.start_worker(name, wait_ready=False)
        if self._wait_ready:
            self.wait_ready()

    def close(self) -> None:
        """Every worker (SIGTERM, SIGKILL past ``stop_timeout_s``), then Milvus and the broker."""
        self._exit.close()

    # -- one worker ---------------------------------------------------------------------------------

    def start_worker(
        self,
        name: str,
        *,
        kind: str | None = None,
        args: Sequence[str] = (),
        module: str = "workers.cli",
        env: Mapping[str, str] | None = None,
        wait_ready: bool = True,
    ) -> Child:
        """Start worker ``name`` of ``kind`` (default: the name): ``mindstream <kind> <args>``, or ``python -m
        <module> <args>``; its log ``<logs>/<name>.log``; ``env`` laid over the stack's environment."""
        if name in self.children and self.children[name].running:
            raise RuntimeError(f"{name} is already running")
        self._kinds[name] = kind or name
        argv = [kind or name, *args] if module == "workers.cli" else list(args)
        child = Child(name, argv, self.env | dict(env or {}), self.logs_dir / f"{name}.log", module=module)
        self.supervisor.children = [c for c in self.supervisor.children if c.name != name] + [child]
        self.supervisor.start_child(child)
        if wait_ready:
            self.wait_ready([name])
        return child

    def kill(self, name: str, sig: signal.Signals = signal.SIGKILL) -> int:
        """Send ``sig`` to the worker (``kill -9`` by default: no clean-up of any kind) and wait for it."""
        proc = self._proc(name)
        proc.send_signal(sig)
        return proc.wait(self.stop_timeout_s)

    def stop_worker(self, name: str) -> int | None:
        """SIGTERM (the worker finishes its batch and commits), SIGKILL past ``stop_timeout_s``; its exit code."""
        child = self.children[name]
        child.stop(self.stop_timeout_s)
        return child.proc.returncode if child.proc is not None else None

    def restart(self, name: str, *, wait_ready: bool = True) -> int:
        """Stop the worker if it still runs, start the same command again; its new pid."""
        child = self.children[name]
        child.stop(self.stop_timeout_s)
        child.restarts = 0
        self.supervisor.start_child(child)
        if wait_ready:
            self.wait_ready([name])
        return self._proc(name).pid

    # -- observations -------------------------------------------------------------------------------

    @property
    def children(self) -> dict[str, Child]:
        return {child.name: child for child in self.supervisor.children}

    @property
    def pids(self) -> dict[str, int]:
        """The pid of every running worker."""
        return {c.name: c.proc.pid for c in self.supervisor.children if c.proc is not None and c.running}

    @property
    def bootstrap(self) -> str:
        servers = self.settings.kafka.bootstrap_servers
        assert servers is not None, "the stack is not started"
        return servers

    @property
    def milvus_uri(self) -> str:
        uri = self.settings.milvus.uri
        assert uri is not None, "the stack is not started"
        return uri

    @property
    def http_url(self) -> str:
        return f"http://{_reachable(self.settings.http.host)}:{self.settings.http.port}"

    def metrics_url(self, worker: str) -> str:
        """Where ``worker`` serves ``/metrics`` (the gateway: on its HTTP port)."""
        if worker not in METRICS_WORKERS:
            return f"{self.http_url}/metrics"
        port = getattr(self.settings, worker).metrics_port
        return f"http://{_reachable(self.settings.metrics_host)}:{port}/metrics"

    def ready_url(self, name: str) -> str:
        return self.metrics_url(self._kind(name)).removesuffix("/metrics") + "/readyz"

    def is_ready(self, name: str) -> bool:
        try:
            with urllib.request.urlopen(self.ready_url(name), timeout=2) as response:
                return bool(response.status == 200)
        except OSError:  # HTTPError (503: not ready) included
            return False

    def wait_ready(self, names: Iterable[str] | None = None, timeout_s: float | None = None) -> None:
        """Until every named worker (default: all) answers ``/readyz`` with 200; raises :class:`WorkerExited`
        when one exits meanwhile, ``TimeoutError`` past ``timeout_s`` (default ``ready_timeout_s``)."""
        waiting = list(names if names is not None else self.children)
        deadline = time.monotonic() + (self.ready_timeout_s if timeout_s is None else timeout_s)
        while waiting:
            self.check_alive(waiting)
            waiting = [name for name in waiting if not self.is_ready(name)]
            if waiting and time.monotonic() > deadline:
                tails = "\n".join(f"--- {name}:\n{self.log_tail(name)}" for name in waiting)
                raise TimeoutError(f"not ready: {', '.join(waiting)}\n{tails}")
            if waiting:
                time.sleep(0.25)

    def check_alive(self, names: Iterable[str] | None = None) -> None:
        """Raise :class:`WorkerExited` (with its log's tail) if a named worker (default: any) has exited."""
        for name in names if names is not None else self.children:
            proc = self._proc(name)
            if proc.poll() is not None:
                raise WorkerExited(f"worker {name} exited with {proc.returncode}:\n{self.log_tail(name)}")

    def supervise(self) -> None:
        """Restart a worker that exited, after the supervisor's back-off (``mindstream up`` calls it)."""
        self.supervisor.check()

    def log_path(self, name: str) -> Path:
        return self.children[name].log_path

    def log_tail(self, name: str, lines: int = 25) -> str:
        path = self.log_path(name)
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def _kind(self, name: str) -> str:
        return self._kinds.get(name, name)

    def _proc(self, name: str) -> subprocess.Popen[bytes]:
        proc = self.children[name].proc
        if proc is None:
            raise RuntimeError(f"{name} was never started")
        return proc


def on_free_ports(settings: Settings) -> Settings:
    """``settings`` with the embedded broker's, embedded Milvus' and the gateway's ports free ones (picked now):
    a stack beside another (a benchmark's or a test's next to ``mindstream up``)."""
    kafka = settings.kafka.model_copy(update={"embedded_port": free_port(), "embedded_controller_port": free_port()})
    milvus = settings.milvus.model_copy(update={"embedded_port": free_port()})
    http = settings.http.model_copy(update={"port": free_port()})
    return settings.model_copy(update={"kafka": kafka, "milvus": milvus, "http": http})


def _reachable(host: str) -> str:
    """An address to reach a server bound to ``host`` from this machine."""
    return "127.0.0.1" if host in ANY_ADDRESS else host


def _absolute_paths(settings: Settings) -> dict[str, object]:
    """State dir and data path made absolute: the workers may run elsewhere than this process."""
    update: dict[str, object] = {"state_dir": settings.state_dir.resolve()}
    if settings.data.path is not None:
        update["data"] = settings.data.model_copy(update={"path": settings.data.path.resolve()})
    return update
