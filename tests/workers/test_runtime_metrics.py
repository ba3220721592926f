"""A worker's /metrics server (``workers.runtime``) listens on loopback unless ``metrics_host`` says
otherwise: checked on the socket the process holds (psutil) and, where the machine has an address
other than loopback, by connecting to it."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Iterator

import psutil
import pytest
from prometheus_client import CollectorRegistry, Counter

from tests.fixtures_milvus import free_port
from workers.runtime import serve_metrics


def _listening(port: int) -> set[str]:
    return {
        c.laddr.ip
        for c in psutil.Process().net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port
    }


def _other_addresses() -> list[str]:
    """IPv4 addresses of this machine other than loopback."""
    return [
        a.address
        for addrs in psutil.net_if_addrs().values()
        for a in addrs
        if a.family == socket.AF_INET and not a.address.startswith("127.")
    ]


def _refused(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return False
    except OSError:
        return True


@pytest.fixture
def registry() -> Iterator[CollectorRegistry]:
    registry = CollectorRegistry()
    Counter("mindstream_probe", "a probe", registry=registry).inc()
    yield registry


def test_metrics_listen_on_loopback_by_default(registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MINDSTREAM_METRICS_HOST", raising=False)
    port = free_port()
    server = serve_metrics(registry, port)
    try:
        assert _listening(port) == {"127.0.0.1"}
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            assert b"mindstream_probe_total 1.0" in resp.read()
        for address in _other_addresses():
            assert _refused(address, port), f"/metrics answered on {address}"
    finally:
        server.shutdown()
        server.server_close()


def test_the_setting_opens_them_to_every_interface(
    registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MINDSTREAM_METRICS_HOST", "0.0.0.0")
    port = free_port()
    server = serve_metrics(registry, port)
    try:
        assert _listening(port) == {"0.0.0.0"}
        for address in _other_addresses():
            assert not _refused(address, port), f"/metrics did not answer on {address}"
    finally:
        server.shutdown()
        server.server_close()
