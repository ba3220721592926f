"""Metric helpers shared by the workers: bucket layouts and the consumer-lag gauge fed by librdkafka.

Each worker keeps its own metrics class next to it (``workers/ingest/metrics.py``,
``workers/refresh/metrics.py``, ``workers/recall/metrics.py``), built on an injected
``CollectorRegistry`` so tests can make fresh ones.
"""

from __future__ import annotations

import json
import logging
from typing import Final

from prometheus_client import CollectorRegistry, Gauge

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
    """Copy ``consumer_lag`` per assigned partition from a librdkafka ``stats_cb`` payload (librdkafka
    reports -1 while it knows no position or watermark yet; those are skipped)."""
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
