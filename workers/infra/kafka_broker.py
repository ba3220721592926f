"""The embedded Apache Kafka broker: N combined (broker + controller) KRaft nodes on loopback.

``KafkaCluster(data_dir, nodes=1)`` is what ``mindstream up``, the tests and the benchmarks start;
three nodes give the replicated cluster of the failover tests. Each node is the stock broker
(``java -cp '<libs>/*' kafka.Kafka server.properties``, jars from :mod:`workers.infra.kafka_dist`),
its storage formatted once with Kafka's ``StorageTool`` under ``<data_dir>/node-<id>`` (a static
quorum: ``controller.quorum.voters`` names every node), so a restart on the same directory keeps
topics, messages and committed offsets. Settings for a small machine: a small heap, one partition and
replication ``min(N, 3)`` for the internal topics, no initial rebalance delay, a 2 MiB log-cleaner
buffer (its 128 MiB default does not fit a small heap), group sessions down to 1 s (tests kill group
members and wait for their partitions to move). Broker logs go to ``<data_dir>/logs``.

``stop()`` sends SIGTERM (the broker's controlled shutdown) and SIGKILL after ``stop_timeout``;
:meth:`KafkaCluster.kill` is ``kill -9`` of one node, :meth:`KafkaCluster.restart` starts it again.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import logging
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Final, Self

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from workers.infra.kafka_dist import KafkaDist, resolve_kafka
from workers.infra.ports import accepts, free_port
from workers.settings import KafkaSettings

__all__ = ["BrokerError", "KafkaCluster", "NodePorts", "open_kafka"]

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG: Final = 1
_READY_LINE: Final = b"Kafka Server started"
_LOG4J2: Final = """Configuration:
  Appenders:
    RollingFile:
      name: File
      fileName: "{log}"
      filePattern: "{log}.%i"
      PatternLayout:
        pattern: "[%d] %p %m (%c)%n"
      SizeBasedTriggeringPolicy:
        size: 20MB
      DefaultRolloverStrategy:
        max: 3
  Loggers:
    Root:
      level: INFO
      AppenderRef:
        - ref: File
    Logger:
      - name: kafka.request.logger
        level: WARN
      - name: org.apache.kafka.controller
        level: INFO
"""


class BrokerError(RuntimeError):
    """The embedded broker could not be started or reached."""


@dataclass(frozen=True)
class NodePorts:
    """A node's client (PLAINTEXT) and controller (KRaft quorum) ports."""

    broker: int
    controller: int


def _die_with_parent() -> None:  # runs in the child between fork and exec (Linux only)
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _cluster_id() -> str:
    """A Kafka ``Uuid`` in its string form (URL-safe base64 of 16 random bytes), as ``random-uuid`` prints."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):  # Kafka refuses ids that look like a command-line flag
            return text


class _Node:
    """One combined KRaft node: its config, storage and process."""

    def __init__(self, cluster: KafkaCluster, node_id: int, ports: NodePorts) -> None:
        self.cluster = cluster
        self.node_id = node_id
        self.ports = ports
        self.dir = cluster.data_dir / f"node-{node_id}"
        self.proc: subprocess.Popen[bytes] | None = None
        self._out: IO[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.cluster.log_dir / f"node-{self.node_id}.log"

    @property
    def bootstrap(self) -> str:
        return f"{self.cluster.host}:{self.ports.broker}"

    def properties(self) -> dict[str, str]:
        host, n = self.cluster.host, self.cluster.nodes
        voters = ",".join(f"{node.node_id}@{host}:{node.ports.controller}" for node in self.cluster.members)
        replicas = str(min(n, 3))
        isr = str(min(n, 2))
        props = {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            "listeners": f"PLAINTEXT://{host}:{self.ports.broker},CONTROLLER://{host}:{self.ports.controller}",
            "advertised.listeners": f"PLAINTEXT://{host}:{self.ports.broker}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "controller.quorum.voters": voters,
            "log.dirs": str(self.dir / "data"),
            "num.partitions": "1",
            "default.replication.factor": replicas,
            "offsets.topic.replication.factor": replicas,
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": replicas,
            "transaction.state.log.min.isr": isr,
            "transaction.state.log.num.partitions": "1",
            "share.coordinator.state.topic.replication.factor": replicas,
            "share.coordinator.state.topic.min.isr": isr,
            "share.coordinator.state.topic.num.partitions": "1",
            "group.initial.rebalance.delay.ms": "0",
            "group.min.session.timeout.ms": "1000",  # dev and tests: a killed member's partitions move fast
            "log.cleaner.dedupe.buffer.size": str(2 * 1024 * 1024),
            "log.retention.check.interval.ms": "60000",
            "num.io.threads": "4",
            "num.network.threads": "2",
            "num.recovery.threads.per.data.dir": "1",
        }
        props.update(self.cluster.overrides)
        return props

    def write_config(self) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cluster.log_dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in self.properties().items()))
        (self.dir / "log4j2.yaml").write_text(_LOG4J2.format(log=self.log_path))
        shutil.rmtree(self.tmp_dir, ignore_errors=True)  # a killed JVM's leftovers; no JVM of this node runs now
        self.tmp_dir.mkdir()
        return path

    @property
    def tmp_dir(self) -> Path:
        """The JVM's ``java.io.tmpdir``: lz4-java unpacks its native library there on every start and a
        ``kill -9`` leaves it behind, so it stays under the node's directory, not the system's /tmp."""
        return self.dir / "tmp"

    def java(self, main: str, *args: str, heap_mb: int) -> list[str]:
        dist = self.cluster.dist
        return [
            str(dist.java),
            f"-Xmx{heap_mb}m",
            f"-Xms{heap_mb}m",
            "-server",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:+ExplicitGCInvokesConcurrent",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.dir / 'log4j2.yaml'}",
            f"-Dkafka.logs.dir={self.cluster.log_dir}",
            f"-Djava.io.tmpdir={self.tmp_dir}",
            "-cp",
            dist.classpath,
            main,
            *args,
        ]

    def formatted(self) -> bool:
        return (self.dir / "data" / "meta.properties").is_file()

    def format(self, cluster_id: str) -> None:
        """Kafka's StorageTool, once per directory (a formatted one is left as it is)."""
        config = self.write_config()
        if self.formatted():
            return
        command = self.java("kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(config), heap_mb=128)
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise BrokerError(f"formatting {self.dir} failed: {(done.stdout + done.stderr).strip()[-1000:]}")

    def start(self) -> None:
        if self.running:
            raise BrokerError(f"node {self.node_id} already running")
        for port in (self.ports.broker, self.ports.controller):
            if accepts(self.cluster.host, port):
                raise BrokerError(f"{self.cluster.host}:{port} is already in use")
        config = self.write_config()
        self._out = (self.cluster.log_dir / f"node-{self.node_id}.out").open("ab")
        self._mark = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.proc = subprocess.Popen(
            self.java("kafka.Kafka", str(config), heap_mb=self.cluster.heap_mb),
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            start_new_session=True,  # Ctrl-C reaches the owner only: it stops the broker after its clients
        )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def started_line_seen(self) -> bool:
        try:
            with self.log_path.open("rb") as fh:
                fh.seek(self._mark)
                return _READY_LINE in fh.read()
        except FileNotFoundError:
            return False

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise BrokerError(
                f"Kafka node {self.node_id} exited with code {self.proc.returncode}; log: {self.log_path}\n"
                + self.log_tail()
            )

    def log_tail(self, lines: int = 15) -> str:
        for path in (self.cluster.log_dir / f"node-{self.node_id}.out", self.log_path):
            with contextlib.suppress(OSError):
                text = path.read_text(errors="replace").strip().splitlines()
                if text:
                    return "\n".join(text[-lines:])
        return ""

    def stop(self, timeout: float) -> None:
        """SIGTERM (controlled shutdown), SIGKILL after ``timeout``; reaps. Idempotent."""
        proc, self.proc = self.proc, None
        try:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    log.warning("Kafka node %d did not stop within %.0f s: killed", self.node_id, timeout)
                    proc.kill()
                    proc.wait()
        finally:
            self._close_out()

    def kill(self) -> None:
        """``kill -9``: no controlled shutdown."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        self._close_out()

    def _close_out(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None


class KafkaCluster:
    """``with KafkaCluster(dir) as kafka: kafka.bootstrap`` — N combined KRaft nodes, data under ``dir``.

    ``ports`` fixes each node's ports (``mindstream up``: the settings' ports, so a restart on the same
    directory is the same cluster at the same address); default: free ports picked now.
    ``overrides`` are extra ``server.properties`` entries for every node.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        nodes: int = 1,
        host: str = "127.0.0.1",
        ports: list[NodePorts] | None = None,
        version: str | None = None,
        cache_dir: Path | None = None,
        heap_mb: int | None = None,
        overrides: Mapping[str, str] | None = None,
        start_timeout: float = 60.0,
        stop_timeout: float = 20.0,
    ) -> None:
        defaults = KafkaSettings()
        if nodes < 1:
            raise ValueError("a cluster needs at least one node")
        if ports is not None and len(ports) != nodes:
            raise ValueError(f"{nodes} nodes need {nodes} port pairs, got {len(ports)}")
        self.data_dir = data_dir
        self.nodes = nodes
        self.host = host
        self.version = version or defaults.embedded_version
        self.cache_dir = cache_dir or defaults.embedded_cache_dir
        self.heap_mb = heap_mb or defaults.embedded_heap_mb
        self.overrides = dict(overrides or {})
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.started_in_s: float | None = None
        self._dist: KafkaDist | None = None
        pairs = ports or [NodePorts(free_port(host), free_port(host)) for _ in range(nodes)]
        self.members = [_Node(self, i + 1, pair) for i, pair in enumerate(pairs)]

    @property
    def dist(self) -> KafkaDist:
        if self._dist is None:
            self._dist = resolve_kafka(self.version, self.cache_dir)
        return self._dist

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def bootstrap(self) -> str:
        """``host:port,...`` of every node, for ``bootstrap.servers``."""
        return ",".join(node.bootstrap for node in self.members)

    @property
    def running(self) -> bool:
        return all(node.running for node in self.members)

    def pid(self, node_id: int) -> int | None:
        proc = self.member(node_id).proc
        return proc.pid if proc is not None else None

    def member(self, node_id: int) -> _Node:
        return self.members[node_id - 1]

    def _cluster_id(self) -> str:
        path = self.data_dir / "cluster.id"
        if path.is_file():
            return path.read_text().strip()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cid = _cluster_id()
        path.write_text(cid + "\n")
        return cid

    def start(self) -> None:
        """Format what is new, start every node, return once all of them serve metadata."""
        began = time.perf_counter()
        cid = self._cluster_id()
        self.dist  # noqa: B018 - resolve (or fail with the install hint) before anything starts
        with ThreadPoolExecutor(self.nodes) as pool:
            list(pool.map(lambda node: node.format(cid), self.members))
        try:
            for node in self.members:
                node.start()
            self.wait_ready(began + self.start_timeout)
        except BaseException:
            self.stop()
            raise
        self.started_in_s = time.perf_counter() - began
        log.info(
            "Apache Kafka %s: %d node(s) at %s in %.1f s", self.version, self.nodes, self.bootstrap, self.started_in_s
        )

    def wait_ready(self, deadline: float, expect: int | None = None) -> None:
        """Until the running nodes have logged their start and metadata lists ``expect`` brokers."""
        expect = expect if expect is not None else sum(node.running for node in self.members)
        live = [node for node in self.members if node.running]
        admin = AdminClient({"bootstrap.servers": ",".join(n.bootstrap for n in live), "log_level": 0})
        while True:
            for node in live:
                node.check_alive()
            if time.perf_counter() > deadline:
                raise BrokerError(
                    f"Kafka at {self.bootstrap} not ready within {self.start_timeout:.0f} s; logs: {self.log_dir}"
                )
            if all(node.started_line_seen() for node in live):
                try:
                    if len(admin.list_topics(timeout=1.0).brokers) >= expect:
                        return
                except KafkaException:
                    pass
            time.sleep(0.1)

    def kill(self, node_id: int) -> None:
        """``kill -9`` one node."""
        self.member(node_id).kill()

    def stop_node(self, node_id: int) -> None:
        """Controlled shutdown of one node."""
        self.member(node_id).stop(self.stop_timeout)

    def restart(self, node_id: int, timeout: float | None = None) -> None:
        """Start a stopped or killed node again and wait until the cluster lists it."""
        node = self.member(node_id)
        node.start()
        self.wait_ready(time.perf_counter() + (timeout or self.start_timeout))

    def stop(self) -> None:
        """Stop every node (in parallel: a lone survivor of a quorum cannot finish its shutdown)."""
        with ThreadPoolExecutor(self.nodes) as pool:
            list(pool.map(lambda node: node.stop(self.stop_timeout), self.members))

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def embedded_cluster(settings: KafkaSettings, data_dir: Path) -> KafkaCluster:
    """The embedded broker ``settings`` describe (not started): its ports, version, heap; data in ``data_dir``."""
    if settings.security_protocol != "PLAINTEXT":
        raise BrokerError("the embedded broker is PLAINTEXT only: set bootstrap_servers for a secured one")
    return KafkaCluster(
        data_dir,
        host=settings.embedded_host,
        ports=[NodePorts(settings.embedded_port, settings.embedded_controller_port)],
        version=settings.embedded_version,
        cache_dir=settings.embedded_cache_dir,
        heap_mb=settings.embedded_heap_mb,
    )


@contextlib.contextmanager
def _kafka(settings: KafkaSettings, data_dir: Path) -> Iterator[str]:
    if settings.bootstrap_servers:
        yield settings.bootstrap_servers
        return
    with embedded_cluster(settings, data_dir) as cluster:
        yield cluster.bootstrap


def open_kafka(settings: KafkaSettings, data_dir: Path) -> AbstractContextManager[str]:
    """Bootstrap servers: the configured cluster, or the embedded broker (data in ``data_dir``) for the block."""
    return _kafka(settings, data_dir)
