"""Metric helpers shared by the workers: bucket layouts and the consumer-lag gauge fed by librdkafka.

Each worker keeps its own metrics class next to it (``workers/ingest/metrics.py``,
``workers/refresh/metrics.py``, ``workers/recall/metrics.py``), built on an injected
``CollectorRegistry`` so tests can make fresh ones.
"""

from __future__ import annotations

import gc
import json
import logging
import time
from typing import Any, Final

from prometheus_client import CollectorRegistry, Gauge, Histogram

log = logging.getLogger(__name__)

BATCH_SIZE_BUCKETS: Final = (1, 10, 100, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000)
SECONDS_BUCKETS: Final = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
GC_BUCKETS: Final = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


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


class GcPauses:
    """``mindstream_gc_pause_seconds{generation}``: every run of Python's cyclic garbage collector, timed by a
    ``gc.callbacks`` hook. A collection holds the GIL: every thread of the process (the consumer, the
    batcher, the event loop) waits for it, so on the serving path a long one is latency.

    :meth:`install` once the worker is built, :meth:`uninstall` when it stops (the hook is process-wide)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.pauses = Histogram(
            "mindstream_gc_pause_seconds",
            "Pauses of Python's cyclic garbage collector (the GIL is held throughout)",
            ["generation"],
            buckets=GC_BUCKETS,
            registry=registry,
        )
        self._series = [self.pauses.labels(generation=str(g)) for g in range(3)]  # every series from the start
        self._began = 0.0

    def install(self) -> None:
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)

    def uninstall(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        elif self._began:
            self._series[int(info.get("generation", 2))].observe(time.perf_counter() - self._began)
            self._began = 0.0
