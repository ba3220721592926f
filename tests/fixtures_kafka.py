"""Fixtures for the embedded Tansu broker: one broker per test session, unique topic names per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from workers.infra.tansu import EmbeddedBroker, free_port
from workers.settings import KafkaSettings

__all__ = ["kafka_bootstrap", "kafka_settings", "topic_name"]


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``host:port`` of an embedded Tansu started once for the whole session (in-memory storage)."""
    log_path = tmp_path_factory.mktemp("tansu") / "tansu.log"
    with EmbeddedBroker("127.0.0.1", free_port(), log_path=log_path) as broker:
        yield broker.bootstrap


@pytest.fixture(scope="session")
def kafka_settings(kafka_bootstrap: str) -> KafkaSettings:
    """Default Kafka settings pointed at the session broker."""
    return KafkaSettings(bootstrap_servers=kafka_bootstrap)


@pytest.fixture
def topic_name(request: pytest.FixtureRequest) -> str:
    """A topic name no other test uses (Tansu keeps topics for the whole session)."""
    stem = "".join(c if c.isalnum() else "-" for c in request.node.name)[:60].strip("-")
    return f"t-{stem}-{uuid.uuid4().hex[:10]}"
