"""Fixtures for the embedded Milvus server: one server per test session, unique names per test."""

from __future__ import annotations

import logging
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from workers.infra.milvus_server import EmbeddedMilvus

__all__ = ["free_port", "milvus_collection_name", "milvus_server", "milvus_uri"]

log = logging.getLogger(__name__)


def free_port() -> int:
    """A port the OS considers free right now (bind to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedMilvus]:
    """ONE embedded Milvus for the whole session, under a tmp dir, stopped at the end."""
    base_dir: Path = tmp_path_factory.mktemp("milvus")
    with EmbeddedMilvus(base_dir, port=free_port()) as server:
        yield server


@pytest.fixture(scope="session")
def milvus_uri(milvus_server: EmbeddedMilvus) -> str:
    return milvus_server.uri


@pytest.fixture
def milvus_collection_name() -> str:
    """A collection name no other test uses."""
    return f"test_{uuid.uuid4().hex[:12]}"
