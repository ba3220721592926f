"""Prometheus metrics of the refresh worker (the dual-store swap), on an injected registry."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

PHASES = ("train", "export", "insert", "index", "verify", "swap")


class RefreshMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.phase_seconds = Histogram(
            "mindstream_refresh_phase_seconds",
            "Duration of each refresh phase",
            ["phase"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=registry,
        )
        self.rounds = Counter("mindstream_refresh_rounds_total", "Refresh rounds started", registry=registry)
        self.swaps = Counter("mindstream_swaps_total", "Successful alias swaps", registry=registry)
        self.failures = Counter(
            "mindstream_swap_failures_total",
            "Refresh rounds that left live untouched",
            ["reason"],
            registry=registry,
        )
        self.events_trained = Counter(
            "mindstream_refresh_events_total",
            "Streamed click events consumed by refreshes",
            registry=registry,
        )
        self.live_version = Gauge("mindstream_live_model_version", "N of the live model v<N>", registry=registry)
        self.live_created = Gauge(
            "mindstream_live_model_created_timestamp_seconds",
            "When the live model was built",
            registry=registry,
        )
        self.live_age = Gauge(
            "mindstream_live_model_age_seconds",
            "Seconds since the live model was built (freshness)",
            registry=registry,
        )
        self.live_age.set_function(self._age)
        self.orphans_dropped = Counter(
            "mindstream_collections_dropped_total", "Orphan or expired collections dropped", registry=registry
        )

    def _age(self) -> float:
        created = self.live_created._value.get()
        return max(time.time() - created, 0.0) if created else 0.0

    def observe_phase(self, phase: str, seconds: float) -> None:
        self.phase_seconds.labels(phase=phase).observe(seconds)

    def set_live(self, version: str, created_at: float) -> None:
        self.live_version.set(int(version.lstrip("v")))
        self.live_created.set(created_at)
