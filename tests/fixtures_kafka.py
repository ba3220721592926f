"""Fixtures for the embedded Apache Kafka broker: one single-node KRaft broker per test session, unique
topic names per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from workers.infra.kafka_broker import KafkaCluster
from workers.settings import KafkaSettings

__all__ = ["kafka_bootstrap", "kafka_cluster", "kafka_settings", "topic_name"]


@pytest.fixture(scope="session")
def kafka_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    """An embedded Apache Kafka node started once for the whole session (storage in a temp dir)."""
    with KafkaCluster(tmp_path_factory.mktemp("kafka")) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_cluster: KafkaCluster) -> str:
    """``host:port`` of the session broker."""
    return kafka_cluster.bootstrap


@pytest.fixture(scope="session")
def kafka_settings(kafka_bootstrap: str) -> KafkaSettings:
    """Default Kafka settings pointed at the session broker."""
    return KafkaSettings(bootstrap_servers=kafka_bootstrap)


@pytest.fixture
def topic_name(request: pytest.FixtureRequest) -> str:
    """A topic name no other test uses (the session broker keeps every topic)."""
    stem = "".join(c if c.isalnum() else "-" for c in request.node.name)[:60].strip("-")
    return f"t-{stem}-{uuid.uuid4().hex[:10]}"
