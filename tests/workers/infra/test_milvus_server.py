"""EmbeddedMilvus: a second server beside the session one, clean stops, busy ports, open_milvus."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from pymilvus import MilvusClient

from tests.fixtures_milvus import free_port
from workers.infra.milvus_server import EmbeddedMilvus, open_milvus
from workers.settings import MilvusSettings


def _processes_under(base_dir: Path) -> list[int]:
    """PIDs whose command line mentions base_dir (the server binary lives in base_dir/bin)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if str(base_dir).encode() in cmdline:
            pids.append(int(entry.name))
    return pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.integration
def test_second_server_runs_beside_the_session_one(milvus_uri: str, tmp_path: Path) -> None:
    with EmbeddedMilvus(tmp_path, port=free_port()) as server:
        assert server.uri != milvus_uri
        pid = server.pid
        assert pid is not None and server.running
        client = MilvusClient(uri=server.uri)
        client.create_collection("only_here", dimension=4)
        assert "only_here" in client.list_collections()
        client.close()
        session_client = MilvusClient(uri=milvus_uri)
        assert "only_here" not in session_client.list_collections()
        session_client.close()
    assert not server.running
    assert not _alive(pid)
    assert _processes_under(tmp_path.resolve()) == []
    server.stop()  # idempotent


@pytest.mark.integration
def test_busy_port_is_an_error_not_a_silent_move(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        server = EmbeddedMilvus(tmp_path, port=sock.getsockname()[1])
        with pytest.raises(RuntimeError, match="bind failed"):
            server.start()
    assert not server.running
    assert _processes_under(tmp_path.resolve()) == []


def test_open_milvus_uses_an_external_uri_without_starting_anything(tmp_path: Path) -> None:
    settings = MilvusSettings(uri="http://milvus.example:19530")
    with open_milvus(settings, tmp_path) as uri:
        assert uri == "http://milvus.example:19530"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.integration
def test_open_milvus_starts_and_stops_an_embedded_server(tmp_path: Path) -> None:
    settings = MilvusSettings(embedded_port=free_port())
    with open_milvus(settings, tmp_path) as uri:
        assert uri == f"http://127.0.0.1:{settings.embedded_port}"
        client = MilvusClient(uri=uri)
        assert client.list_collections() == []
        client.close()
    assert _processes_under(tmp_path.resolve()) == []


@pytest.mark.integration
def test_the_embedded_server_runs_with_the_long_run_limits(milvus_server: EmbeddedMilvus, milvus_uri: str) -> None:
    from workers.infra.milvus_config import EMBEDDED_ETCD, EMBEDDED_LIMITS, yaml_value

    configs = milvus_server.base_dir / "configs"
    milvus_yaml = (configs / "milvus.yaml").read_text(encoding="utf-8")
    for key, value in EMBEDDED_LIMITS.items():
        assert yaml_value(milvus_yaml, key) == str(value), key
    etcd_yaml = (configs / "embed-etcd.yaml").read_text(encoding="utf-8")
    for key in EMBEDDED_ETCD:
        assert yaml_value(etcd_yaml, key) is not None, key
    client = MilvusClient(uri=milvus_uri)  # and the server took them
    assert isinstance(client.list_collections(), list)
    client.close()
