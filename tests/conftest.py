"""Shared fixtures: the real embedded Milvus and the real embedded Kafka-protocol broker."""

from tests.fixtures_kafka import *  # noqa: F403
from tests.fixtures_milvus import *  # noqa: F403
