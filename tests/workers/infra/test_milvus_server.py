"""EmbeddedMilvus: a second server beside the session one, clean stops, busy ports, open_milvus."""

from __future__ import annotations

import ipaddress
import os
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from pymilvus import MilvusClient

from tests.fixtures_milvus import free_port
from tests.required_tools import lacks_sys_nice, requires_sys_nice
from workers.infra.milvus_server import KNOWHERE_NICE, EmbeddedMilvus, open_milvus
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
@pytest.mark.slow  # starts a server of its own
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
@pytest.mark.slow  # starts a server of its own
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


def _thread_niceness(pid: int) -> list[tuple[str, int]]:
    """(name, niceness) of every thread of ``pid``."""
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            out.append((name, os.getpriority(os.PRIO_PROCESS, int(task.name))))
        except OSError:  # the thread ended meanwhile
            continue
    return out


def _knowhere_threads(server: EmbeddedMilvus, search_nice: int) -> list[tuple[str, int]]:
    """(name, niceness) of the server's knowhere threads once its search threads exist (the first search
    starts them) and show ``search_nice``, or after 10 s."""
    client = MilvusClient(uri=server.uri)
    name = f"nice_{os.getpid()}"
    try:
        client.create_collection(name, dimension=8)  # quick setup: indexed (AUTOINDEX) and loaded
        rows = np.random.default_rng(0).random((3000, 8), dtype=np.float32)
        client.insert(name, [{"id": i, "vector": v.tolist()} for i, v in enumerate(rows)])
        client.flush(name)  # seals the segment: the index node starts its build threads
        client.search(name, [rows[0].tolist()], limit=3)  # and the query node its search threads
        deadline = time.monotonic() + 10
        threads = _thread_niceness(server.pid or 0)
        while time.monotonic() < deadline:
            threads = _thread_niceness(server.pid or 0)
            searches = [p for n, p in threads if n.startswith("Knowhere_Search")]
            if searches and all(p == search_nice for p in searches):
                break
            time.sleep(0.5)
    finally:
        client.drop_collection(name)
        client.close()
    return [t for t in threads if t[0].startswith("Knowhere")]


@pytest.mark.integration
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="per-thread niceness is Linux's")
def test_search_threads_run_at_the_configured_niceness(milvus_server: EmbeddedMilvus) -> None:
    """The capability's case: knowhere starts its search and build threads at niceness 19; on the session
    server (default ``embedded_search_nice``) the search threads are brought to that niceness, the build
    threads keep 19. Without CAP_SYS_NICE this skips (fails in CI as root) and the next test runs."""
    requires_sys_nice()
    want = MilvusSettings().embedded_search_nice
    assert want < KNOWHERE_NICE
    knowhere = _knowhere_threads(milvus_server, want)
    searches = [p for n, p in knowhere if n.startswith("Knowhere_Search")]
    assert searches and all(p == want for p in searches), knowhere
    builds = [p for n, p in knowhere if n.startswith("Knowhere_Build")]
    assert builds and all(p == KNOWHERE_NICE for p in builds), knowhere


@pytest.mark.integration
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="per-thread niceness is Linux's")
def test_without_cap_sys_nice_the_search_threads_keep_19_and_the_server_runs(milvus_server: EmbeddedMilvus) -> None:
    """The fallback case: lowering is refused, the search threads keep knowhere's 19 and searches answer."""
    lacks_sys_nice("test_search_threads_run_at_the_configured_niceness")
    knowhere = _knowhere_threads(milvus_server, KNOWHERE_NICE)
    searches = [p for n, p in knowhere if n.startswith("Knowhere_Search")]
    builds = [p for n, p in knowhere if n.startswith("Knowhere_Build")]
    assert searches and builds and all(p == KNOWHERE_NICE for p in searches + builds), knowhere


def test_search_niceness_outside_0_19_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    for bad in (-1, 20):
        with pytest.raises(ValidationError, match="embedded_search_nice"):
            MilvusSettings(embedded_search_nice=bad)
        with pytest.raises(ValueError, match=r"search_nice must be a niceness in 0\.\.19"):
            EmbeddedMilvus(tmp_path, search_nice=bad)
    monkeypatch.setenv("MINDSTREAM_MILVUS__EMBEDDED_SEARCH_NICE", "high")
    from workers.settings import Settings

    with pytest.raises(ValidationError, match="embedded_search_nice"):
        Settings()


@pytest.mark.integration
def test_only_what_milvus_cannot_bind_elsewhere_listens_beyond_loopback(milvus_server: EmbeddedMilvus) -> None:
    """The embedded etcd listens on 127.0.0.1 only; the sockets on other interfaces are exactly Milvus 2.3's
    gRPC servers and its metrics server, whose listen address is hard-coded (module doc): no other port."""
    ports = milvus_server.ports()
    listeners = milvus_server.listeners()
    assert ("::", ports["proxy_port"]) in listeners or ("0.0.0.0", ports["proxy_port"]) in listeners
    etcd = {ports["etcd_port"], ports["etcd_peer_port"]}
    assert {(ip, port) for ip, port in listeners if port in etcd} == {("127.0.0.1", p) for p in etcd}
    hard_coded = {port for name, port in ports.items() if name not in {"etcd_port", "etcd_peer_port"}}
    beyond = {port for ip, port in listeners if not ipaddress.ip_address(ip).is_loopback}
    assert beyond <= hard_coded, f"ports beyond loopback that are not Milvus' own servers: {beyond - hard_coded}"
