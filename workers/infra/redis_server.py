"""A local ``redis-server`` (Debian's ``redis-server`` package, Redis 7) for tests and one-host runs.

Started on loopback with its own directory and the settings the ingest state's guarantees need
(``workers/ingest/redis_store.py``): ``appendonly yes`` with ``appendfsync always`` (every
acknowledged ``EXEC`` is on disk before the reply: a ``kill -9`` of the server loses no committed
batch), no RDB snapshots (the append-only file is the state), ``maxmemory-policy noeviction``.
:meth:`RedisServer.kill` is a ``kill -9``; :meth:`RedisServer.start` again on the same directory
replays the append-only file.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Final

from workers.infra.ports import free_port

REDIS_SERVER: Final = "redis-server"
_READY_TIMEOUT_S: Final = 20.0


def redis_server_binary() -> str | None:
    return shutil.which(REDIS_SERVER)


class RedisServer:
    """``start()`` / ``kill()`` / ``stop()`` one ``redis-server`` on ``127.0.0.1:port`` over ``directory``."""

    def __init__(self, directory: Path, port: int | None = None, appendfsync: str = "always") -> None:
        binary = redis_server_binary()
        if binary is None:
            raise FileNotFoundError(f"{REDIS_SERVER} not found (Debian: apt-get install redis-server)")
        self.binary = binary
        self.directory = directory
        self.host = "127.0.0.1"
        self.port = port or free_port(self.host)
        self.appendfsync = appendfsync
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def command(self) -> list[str]:
        return [
            self.binary,
            "--bind", self.host,
            "--port", str(self.port),
            "--dir", str(self.directory),
            "--appendonly", "yes",
            "--appendfsync", self.appendfsync,
            "--save", "",
            "--maxmemory-policy", "noeviction",
            "--protected-mode", "yes",
            "--daemonize", "no",
            "--logfile", str(self.directory / "redis.log"),
        ]  # fmt: skip

    def start(self) -> RedisServer:
        """Start and wait until it answers PING (having loaded its append-only file)."""
        if self._process is not None and self._process.poll() is None:
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        self._process = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        import redis

        deadline = time.monotonic() + _READY_TIMEOUT_S
        client = redis.Redis(host=self.host, port=self.port, socket_timeout=1.0, socket_connect_timeout=1.0)
        try:
            while True:
                if self._process is not None and self._process.poll() is not None:
                    raise RuntimeError(f"redis-server exited with {self._process.returncode}: see {self.directory}")
                try:
                    if client.ping():
                        return
                except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"redis-server on port {self.port} not ready in {_READY_TIMEOUT_S} s")
                time.sleep(0.05)
        finally:
            client.close()

    def kill(self) -> None:
        """``kill -9``: no shutdown, no final write."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGKILL)
            self._process.wait(timeout=10)
        self._process = None

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=10)
        self._process = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
