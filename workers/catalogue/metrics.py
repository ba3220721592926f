"""The catalogue worker's Prometheus metrics (counter names without ``_total``: prometheus_client appends it)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from workers.metrics import BATCH_SIZE_BUCKETS, SECONDS_BUCKETS, consumer_lag_gauge, observe_consumer_lag


class CatalogueMetrics:
    """The catalogue worker's metrics."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.consumed = Counter(
            "mindstream_catalogue_events_consumed", "Messages read from the items topic", registry=registry
        )
        self.changed = Counter(
            "mindstream_catalogue_items_changed",
            "Item events and tombstones that changed an item's state",
            registry=registry,
        )
        self.stale = Counter(
            "mindstream_catalogue_events_stale",
            "Valid item events ignored because the item's state was newer (by ts)",
            registry=registry,
        )
        self.tombstones = Counter(
            "mindstream_catalogue_tombstones", "Null values read: items deleted", registry=registry
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
            "mindstream_catalogue_batch_retries",
            "Batches read again because a dead letter was not acknowledged (offsets held, nothing applied)",
            registry=registry,
        )
        self.batch_size = Histogram(
            "mindstream_catalogue_batch_size",
            "Messages per consumed batch",
            buckets=BATCH_SIZE_BUCKETS,
            registry=registry,
        )
        self.batch_seconds = Histogram(
            "mindstream_catalogue_batch_duration_seconds",
            "Time to decode, dead-letter and durably apply one batch",
            buckets=SECONDS_BUCKETS,
            registry=registry,
        )
        self.freshness = Histogram(
            "mindstream_catalogue_freshness_seconds",
            "An item event's Kafka timestamp -> durable in the catalogue state (readers see it within "
            "catalogue.poll_s more)",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 30, 60),
            registry=registry,
        )
        self.items = Gauge(
            "mindstream_catalogue_items", "Items in the catalogue state of this worker's partitions", registry=registry
        )
        self.unavailable = Gauge(
            "mindstream_catalogue_unavailable_items",
            "Items whose state is unavailable (withdrawn or deleted), in this worker's partitions",
            registry=registry,
        )
        self.consumer_lag = consumer_lag_gauge(registry)

    def on_stats(self, stats_json: str) -> None:
        """librdkafka ``stats_cb``."""
        observe_consumer_lag(self.consumer_lag, stats_json)
