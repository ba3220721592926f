"""Fixtures for the embedded Milvus server: one server per test session, unique names per test."""

from __future__ import annotations

import logging
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from workers.infra.milvus_server import EmbeddedMilvus

__all__ = ["TEST_MILVUS_CONFIG", "free_port", "milvus_collection_name", "milvus_server", "milvus_uri"]

log = logging.getLogger(__name__)

# Control-plane timers of the session server, shortened: they are waits, not behaviour. A flush waits for
# its segments' allocations to expire (dataCoord.segment.assignmentExpiration, 2 s) and then polls; a
# Strong read waits for the next time tick (proxy.timeTickInterval, 200 ms). Measured on the 2-core box:
# flush 2.5 -> 1.0 s, a Strong count 0.4 -> 0.1 s; the idle server with 20 loaded collections uses 11 %
# of a core instead of 5 % (16 % at 50 ms). A load (~3 s) is paced by timers its milvus.yaml does not
# expose. Servers the tests start as the product does (`mindstream up`, the soak, the restart test) keep
# the shipped values.
TEST_MILVUS_CONFIG: dict[str, bool | int | float | str] = {
    "dataCoord.segment.assignmentExpiration": 200,
    "proxy.timeTickInterval": 100,
}


def free_port() -> int:
    """A port the OS considers free right now (bind to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedMilvus]:
    """ONE embedded Milvus for the whole session (per xdist worker), under a tmp dir, stopped at the end."""
    base_dir: Path = tmp_path_factory.mktemp("milvus")
    with EmbeddedMilvus(base_dir, port=free_port(), config=TEST_MILVUS_CONFIG) as server:
        yield server


@pytest.fixture(scope="session")
def milvus_uri(milvus_server: EmbeddedMilvus) -> str:
    return milvus_server.uri


@pytest.fixture
def milvus_collection_name() -> str:
    """A collection name no other test uses."""
    return f"test_{uuid.uuid4().hex[:12]}"
