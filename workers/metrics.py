"""Prometheus metrics: one class per worker kind, each built on an injected ``CollectorRegistry``.

Tests build fresh registries; a process serves one registry. Add a class per worker kind here
(``IngestMetrics``, ...). Counter names are given without ``_total``: prometheus_client appends it.
"""

from __future__ import annotations

import json
import logging
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

log = logging.getLogger(__name__)

BATCH_SIZE_BUCKETS: Final = (1, 10, 100, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000)
SECONDS_BUCKETS: Final = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def consumer_lag_gauge(registry: CollectorRegistry) -> Gauge:
    """``mindstream_consumer_lag{topic,partition}``, fed by ``observe_consumer_lag`` from librdkafka stats."""
    return Gauge(
        "mindstream_consumer_lag",
        "Messages between the partition's high watermark and the consumer's position (librdkafka stats)",
        ["topic", "partition"],
        registry=registry,
    )


def observe_consumer_lag(gauge: Gauge, stats_json: str) -> None:
    """Copy ``consumer_lag`` per assigned partition from a librdkafka ``stats_cb`` payload.

    On the embedded Tansu broker the high watermark is the base offset of the last batch + 1, not
    the last offset + 1, so this lag reads low (even negative, which librdkafka reports as -1 and we
    skip) there; it is right on Apache Kafka.
    """
    try:
        stats = json.loads(stats_json)
    except ValueError:
        log.warning("unreadable librdkafka statistics")
        return
    for topic, tstats in stats.get("topics", {}).items():
        for partition, pstats in tstats.get("partitions", {}).items():
            lag = pstats.get("consumer_lag", -1)
            if partition == "-1" or not isinstance(lag, int) or lag < 0:
                continue
            gauge.labels(topic=topic, partition=partition).set(lag)


class IngestMetrics:
    """The ingest worker's metrics."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.consumed = Counter(
            "mindstream_clicks_consumed", "Click messages read from the clicks topic", registry=registry
        )
        self.valid = Counter("mindstream_clicks_valid", "Click messages that validated", registry=registry)
        self.invalid = Counter(
            "mindstream_clicks_invalid", "Click messages that failed to decode or validate", registry=registry
        )
        self.dead_lettered = Counter(
            "mindstream_dlq_messages",
            "Messages delivered to a dead-letter topic, by reason category",
            ["reason"],
            registry=registry,
        )
        self.batch_size = Histogram(
            "mindstream_ingest_batch_size",
            "Messages per consumed batch",
            buckets=BATCH_SIZE_BUCKETS,
            registry=registry,
        )
        self.batch_seconds = Histogram(
            "mindstream_ingest_batch_duration_seconds",
            "Time to decode, dead-letter and durably apply one batch",
            buckets=SECONDS_BUCKETS,
            registry=registry,
        )
        self.applied = Counter(
            "mindstream_ingest_events_applied", "New events written to the state store", registry=registry
        )
        self.duplicates = Counter(
            "mindstream_ingest_duplicates",
            "Valid events ignored: event_id already applied",
            registry=registry,
        )
        self.consumer_lag = consumer_lag_gauge(registry)

    def on_stats(self, stats_json: str) -> None:
        """librdkafka ``stats_cb``."""
        observe_consumer_lag(self.consumer_lag, stats_json)
