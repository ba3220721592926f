"""The topics the stack uses, with the settings it creates them with (partitions, replication, retention).

Every worker's ``main`` (and ``mindstream up``, the benchmarks) calls :func:`ensure_stack_topics` before
it starts: an existing topic is left as it is (its partitions and configs are the operator's), a
missing one is created as below. Requests and replies are only useful within a client's timeout, so
they keep minutes; clicks keep what ``kafka.clicks_retention_ms`` / ``_bytes`` say (the ingest state
holds what the model needs); dead letters keep days, for a person to look at. The items topic is
compacted, never deleted by time: it keeps the newest record of every item (the whole catalogue, so a
new catalogue state can be rebuilt from it), and tombstones for ``kafka.items_delete_retention_ms``.
"""

from __future__ import annotations

from workers.infra.kafka import Conf, TopicSpec, ensure_topics
from workers.settings import KafkaSettings

__all__ = ["clicks_topics", "ensure_stack_topics", "items_topics", "reply_topic", "request_topics", "stack_topics"]

_HOUR_MS = 3_600_000
_SEGMENT_BYTES = 128 * 1024 * 1024  # retention deletes whole segments: keep them small enough to roll


def _common(kafka: KafkaSettings) -> dict[str, str]:
    return {"min.insync.replicas": str(kafka.min_insync_replicas)} if kafka.min_insync_replicas else {}


def _retention(retention_ms: int, retention_bytes: int = -1) -> dict[str, str]:
    config = {"retention.ms": str(retention_ms), "retention.bytes": str(retention_bytes)}
    if retention_ms > 0:
        config["segment.ms"] = str(min(retention_ms, _HOUR_MS))
    if retention_bytes > 0:
        config["segment.bytes"] = str(min(retention_bytes, _SEGMENT_BYTES))
    return config


def clicks_topics(kafka: KafkaSettings, topic: str | None = None, dlq: str | None = None) -> list[TopicSpec]:
    """The clicks topic and its dead-letter topic."""
    common = _common(kafka)
    return [
        TopicSpec(
            topic or kafka.clicks_topic,
            kafka.clicks_partitions,
            kafka.replication_factor,
            {**common, **_retention(kafka.clicks_retention_ms, kafka.clicks_retention_bytes)},
        ),
        TopicSpec(
            dlq or kafka.clicks_dlq_topic,
            kafka.clicks_partitions,
            kafka.replication_factor,
            {**common, **_retention(kafka.dlq_retention_ms)},
        ),
    ]


def items_topics(kafka: KafkaSettings, topic: str | None = None, dlq: str | None = None) -> list[TopicSpec]:
    """The items topic (compacted: one record per item survives, rolled hourly so compaction can reach it)
    and its dead-letter topic (kept like the clicks' dead letters)."""
    common = _common(kafka)
    compacted = {
        "cleanup.policy": "compact",
        "segment.ms": str(_HOUR_MS),  # the active segment is never compacted
        "delete.retention.ms": str(kafka.items_delete_retention_ms),
    }
    return [
        TopicSpec(
            topic or kafka.items_topic, kafka.items_partitions, kafka.replication_factor, {**common, **compacted}
        ),
        TopicSpec(
            dlq or kafka.items_dlq_topic,
            kafka.items_partitions,
            kafka.replication_factor,
            {**common, **_retention(kafka.dlq_retention_ms)},
        ),
    ]


def reply_topic(kafka: KafkaSettings, name: str) -> TopicSpec:
    """A reply topic (the shared one, or a client's private one)."""
    return TopicSpec(name, 1, kafka.replication_factor, {**_common(kafka), **_retention(kafka.request_retention_ms)})


def request_topics(kafka: KafkaSettings) -> list[TopicSpec]:
    """The requests topic and the shared replies topic."""
    config = {**_common(kafka), **_retention(kafka.request_retention_ms)}
    return [
        TopicSpec(kafka.requests_topic, kafka.requests_partitions, kafka.replication_factor, config),
        reply_topic(kafka, kafka.replies_topic),
    ]


def stack_topics(kafka: KafkaSettings) -> list[TopicSpec]:
    return [*clicks_topics(kafka), *request_topics(kafka), *items_topics(kafka)]


def ensure_stack_topics(conf: Conf, kafka: KafkaSettings, specs: list[TopicSpec] | None = None) -> list[str]:
    """Create the missing ones of ``specs`` (default: every topic of the stack); returns those created."""
    return ensure_topics(conf, specs if specs is not None else stack_topics(kafka))
