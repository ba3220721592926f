"""Prometheus metrics of the refresh worker (the dual-store swap), on an injected registry.

What the worker is doing now: ``mindstream_refresh_activity{activity}`` is 1 while an activity of
:data:`ACTIVITIES` is in progress and 0 otherwise, and ``mindstream_refresh_activity_started_total
{activity}`` counts those started, so that a scraper sampling every second still sees one shorter
than its period (the counter moved). Where each one begins and ends:

* ``round``: a major round, :meth:`RefreshWorker.run_round` from its start to its end: the publish
  lock (normally free at once), the clean-up of old collections, reading the round's clicks,
  training, publishing and sealing (``swap`` below), pruning old model directories, and the memory
  release after it (a full garbage collection and ``malloc_trim``, CPU work on a large heap).
* ``swap``: the Milvus side of a round, from :meth:`Publisher.publish` (export of the item table,
  the shadow collection created, indexed and loaded, the rows inserted, verification by count,
  probe and quality gate, ``alter_alias``) through recording the swap to :meth:`Publisher.seal`
  (the flush). That is where Milvus does the heavy work of a round (loading, inserting, the
  verification searches, sealing segments); a ``VerifyError`` ends it too. It lies inside ``round``.
  The index built over the sealed segments afterwards runs in Milvus' background and the recall
  workers switch to the new version when they next resolve the alias: neither is covered.
* ``fast_path``: a fast-path step with candidate items (:meth:`FastPath.step`: new items the live
  version does not hold yet), from embedding them (the ``steps`` cold-start rule runs optimiser
  steps: CPU work beside serving) through inserting the rows into the live collection and
  verifying them to announcing the generation. A step whose candidates all still wait for context
  counts too (its embedding ran, nothing was inserted); a step with no candidate does not: it only
  read the new clicks.

The bootstrap publish (before anything is served) and a rollback (an alias move, no heavy work) are
none of them. The gauge is incremented and decremented (``Gauge.inc``/``dec``), so it reads the number of that
activity in progress: 0 or 1, as each runs on one thread at a time (the major loop: ``round`` and
``swap``; the fast-path thread: ``fast_path``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

PHASES = ("read", "prepare", "train", "export", "index", "insert", "verify", "swap", "seal", "fast_path")
ACTIVITIES: Final = ("round", "swap", "fast_path")
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
        self.fast_path_pending = Gauge(
            "mindstream_fast_path_pending_items",
            "New items the fast path holds (at most refresh.fast_path_max_pending)",
            registry=registry,
        )
        self.new_items_deferred = Counter(
            "mindstream_refresh_new_items_deferred",
            "New items left for later by a round (past refresh.max_new_items_per_round) or by the fast path (past "
            "refresh.fast_path_max_pending), counted at each deferral",
            ["path"],
            registry=registry,
        )
        for path in ("round", "fast_path"):
            self.new_items_deferred.labels(path=path)  # both series from the start, at 0
        self.segments = Gauge(
            "mindstream_refresh_segments",
            "Click segments with a partition of their own (at most refresh.max_segments)",
            registry=registry,
        )
        self.segments_overflow = Counter(
            "mindstream_refresh_segments_overflow",
            "Clicks whose segment is past refresh.max_segments: their items are in the default partition",
            registry=registry,
        )
        self.orphans_dropped = Counter(
            "mindstream_collections_dropped_total", "Orphan or expired collections dropped", registry=registry
        )
        self.activity = Gauge(
            "mindstream_refresh_activity",
            "1 while the activity (round, swap, fast_path) is in progress, else 0",
            ["activity"],
            registry=registry,
        )
        # Not mindstream_refresh_activity_total: a counter's family would be named like the gauge.
        self.activity_started = Counter(
            "mindstream_refresh_activity_started",
            "Activities (round, swap, fast_path) started",
            ["activity"],
            registry=registry,
        )
        self._activity = {
            a: (self.activity.labels(activity=a), self.activity_started.labels(activity=a)) for a in ACTIVITIES
        }

    @contextlib.contextmanager
    def during(self, activity: str) -> Iterator[None]:
        """``with metrics.during("swap"):``: the activity (one of :data:`ACTIVITIES`) counted as started
        and in progress until the block ends, by an exception too."""
        gauge, started = self._activity[activity]
        started.inc()
        gauge.inc()
        try:
            yield
        finally:
            gauge.dec()

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


def in_progress(metrics: RefreshMetrics | None, activity: str) -> contextlib.AbstractContextManager[None]:
    """:meth:`RefreshMetrics.during`, or nothing where a worker runs without metrics."""
    return metrics.during(activity) if metrics is not None else contextlib.nullcontext()
