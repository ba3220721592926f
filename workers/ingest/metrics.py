"""The ingest worker's Prometheus metrics (counter names without ``_total``: prometheus_client appends it)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from workers.metrics import BATCH_SIZE_BUCKETS, SECONDS_BUCKETS, consumer_lag_gauge, observe_consumer_lag


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
        self.dead_letters_truncated = Counter(
            "mindstream_dlq_truncated",
            "Dead letters cut to fit the dead-letter topic's record size (header dlq_truncated)",
            registry=registry,
        )
        self.batch_retries = Counter(
            "mindstream_ingest_batch_retries",
            "Batches read again because a dead letter was not acknowledged (nothing applied) or the state store "
            "did not answer (offsets held; what was applied is skipped on the re-read)",
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
        self.user_freshness = Histogram(
            "mindstream_freshness_user_seconds",
            "User side: a click's Kafka timestamp -> applied to the state store (recall by user_ids sees it)",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 30, 60),
            registry=registry,
        )
        self.consumer_lag = consumer_lag_gauge(registry)

    def on_stats(self, stats_json: str) -> None:
        """librdkafka ``stats_cb``."""
        observe_consumer_lag(self.consumer_lag, stats_json)
