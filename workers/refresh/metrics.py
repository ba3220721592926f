"""Prometheus metrics of the refresh worker (the dual-store swap), on an injected registry."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

PHASES = ("read", "prepare", "train", "export", "index", "insert", "verify", "swap", "seal", "fast_path")
FRESHNESS_BUCKETS = (0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 600, 1200)


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
        self.new_item_freshness = Histogram(
            "mindstream_freshness_new_item_seconds",
            "An item's first click -> the item is recallable in the live version (fast path or major swap)",
            buckets=FRESHNESS_BUCKETS,
            registry=registry,
        )
        self.click_to_version = Histogram(
            "mindstream_freshness_click_to_version_seconds",
            "A click -> included in a trained, published version (a sample of each round's clicks)",
            buckets=FRESHNESS_BUCKETS,
            registry=registry,
        )
        self.fast_path_items = Counter(
            "mindstream_fast_path_items_total", "New items added to a live version by the fast path", registry=registry
        )
        self.live_generation = Gauge(
            "mindstream_live_generation", "Announced fast-path generation of the live version", registry=registry
        )
        self.orphans_dropped = Counter(
            "mindstream_collections_dropped_total", "Orphan or expired collections dropped", registry=registry
        )

    def _age(self) -> float:
        created = self.live_created._value.get()
        return max(time.time() - created, 0.0) if created else 0.0

    def observe_phase(self, phase: str, seconds: float) -> None:
        self.phase_seconds.labels(phase=phase).observe(seconds)

    def observe_new_items(self, seconds: list[float]) -> None:
        for value in seconds:
            self.new_item_freshness.observe(value)

    def set_live(self, version: str, created_at: float, generation: int = 0) -> None:
        self.live_version.set(int(version.lstrip("v")))
        self.live_created.set(created_at)
        self.live_generation.set(generation)
