"""The /ui status sampler against the workers' real metric classes (fresh registries, no servers).

Expected values are worked out here from what was observed and the bucket layouts, not read back
through the sampler's own helpers: a rate is (after - before) / seconds, a quantile is the upper
bound of the bucket holding it, a lag is the sum over partitions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from workers.gateway.middleware import HttpMetrics
from workers.gateway.ui_status import EVENTS_S, HISTORY_S, SERIES, LiveView, Source, StatusSampler, registry_source
from workers.ingest.metrics import IngestMetrics
from workers.recall.metrics import RecallMetrics
from workers.refresh.metrics import RefreshMetrics


@dataclass
class Clock:
    t: float = 1_000_000.0

    def __call__(self) -> float:
        return self.t


@dataclass
class Live:
    view: LiveView = field(default_factory=lambda: LiveView("none", "no model is live yet"))

    def __call__(self) -> LiveView:
        return self.view


def live(version: str, generation: int = 0, items: int = 100, created_at: float = 999_990.0) -> LiveView:
    return LiveView(
        "live", collection=f"a_{version}", version=version, generation=generation, items=items, created_at=created_at
    )


@dataclass
class Workers:
    registries: dict[str, CollectorRegistry] = field(
        default_factory=lambda: {w: CollectorRegistry() for w in ("ingest", "refresh", "recall", "gateway")}
    )
    down: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        r = self.registries
        self.ingest, self.refresh = IngestMetrics(r["ingest"]), RefreshMetrics(r["refresh"])
        self.recall, self.http = RecallMetrics(r["recall"]), HttpMetrics(r["gateway"])

    def sources(self) -> dict[str, Source]:
        def source(worker: str) -> Source:
            read = registry_source(self.registries[worker])

            def text() -> str:
                if worker in self.down:
                    raise ConnectionRefusedError(f"{worker} is down")
                return read()

            return text

        return {w: source(w) for w in self.registries}


@pytest.fixture
def env() -> tuple[StatusSampler, Workers, Clock, Live]:
    workers, clock, view = Workers(), Clock(), Live()
    urls = {"ingest": "http://127.0.0.1:9101/metrics"}
    sampler = StatusSampler(workers.sources(), view, sample_s=5, window_s=60, urls=urls, clock=clock)
    return sampler, workers, clock, view


def status(sampler: StatusSampler) -> dict[str, Any]:
    out = json.loads(sampler.encoded())
    assert isinstance(out, dict)
    return out


def test_shape_before_anything_is_live(env: tuple[StatusSampler, Workers, Clock, Live]) -> None:
    sampler, _, _, _ = env
    s = status(sampler)  # the first read samples once
    assert set(s) >= {"now", "sample_s", "window_s", "history_s", "live", "workers", "events", "dlq", "series"}
    assert s["live"] == {
        "state": "none",
        "message": "no model is live yet",
        "collection": None,
        "version": None,
        "generation": None,
        "items": None,
        "created_at": None,
        "age_s": None,
    }
    assert set(s["series"]) == {"t", *SERIES}
    assert all(len(v) == 1 for v in s["series"].values())
    assert s["workers"]["ingest"] == {
        "up": True,
        "url": "http://127.0.0.1:9101/metrics",
        "error": None,
        "configured": True,
    }
    assert s["history_s"] == HISTORY_S and s["sample_s"] == 5 and s["window_s"] == 60


def test_values_equal_the_metrics_they_come_from(env: tuple[StatusSampler, Workers, Clock, Live]) -> None:
    sampler, w, clock, view = env
    view.view = live("v3", generation=2, items=1349, created_at=clock.t - 40)
    w.ingest.applied.inc(1000)
    w.refresh.swaps.inc(3)
    sampler.sample()
    clock.t += 5
    w.ingest.applied.inc(500)  # 500 in 5 s
    w.ingest.consumer_lag.labels(topic="clicks", partition="0").set(7)
    w.ingest.consumer_lag.labels(topic="clicks", partition="1").set(5)
    for _ in range(99):
        w.ingest.user_freshness.observe(0.2)  # bucket <= 0.25
    w.ingest.user_freshness.observe(4.0)  # bucket <= 5: the 100th, so p99 is still 0.25's bucket
    w.refresh.new_item_freshness.observe(12.0)  # <= 15
    w.refresh.click_to_version.observe(70.0)  # <= 90
    for _ in range(10):
        w.recall.latency.observe(0.004)  # <= 0.005 s
        w.recall.requests.labels(status="ok").inc()
    for _ in range(20):
        w.http.duration.labels(endpoint="/rec/recall", method="POST").observe(0.02)  # <= 0.025 s
        w.http.requests.labels(endpoint="/rec/recall", method="POST", status="200").inc()
    w.http.duration.labels(endpoint="/ui/api/status", method="GET").observe(3.0)  # not a recall: left out
    w.ingest.dead_lettered.labels(reason="decode").inc(2)
    point = sampler.sample()
    assert point["clicks_per_s"] == 100.0
    assert point["ingest_lag"] == 12
    assert point["fresh_user_p50"] == 0.25 and point["fresh_user_p99"] == 0.25
    assert point["fresh_new_item_p99"] == 15 and point["fresh_click_version_p99"] == 90
    assert point["recall_kafka_p50_ms"] == 5.0 and point["recall_kafka_p99_ms"] == 5.0
    assert point["recall_kafka_per_s"] == 2.0
    assert point["recall_http_p99_ms"] == 25.0 and point["recall_http_per_s"] == 4.0
    assert (point["version"], point["generation"], point["items"], point["age_s"]) == (3, 2, 1349, 45.0)
    assert point["dlq_total"] == 2
    s = status(sampler)
    assert s["current"] == point
    assert s["live"]["version"] == "v3" and s["live"]["collection"] == "a_v3"
    assert s["swaps_total"] == 3
    assert s["dlq"] == {"total": 2, "reasons": [{"reason": "decode", "count": 2, "last_t": clock.t}]}
    assert s["series"]["clicks_per_s"] == [None, 100.0]


def test_quantiles_cover_the_window_only(env: tuple[StatusSampler, Workers, Clock, Live]) -> None:
    sampler, w, clock, _ = env
    for _ in range(50):
        w.recall.latency.observe(0.9)  # <= 1 s, long ago
    sampler.sample()
    for _ in range(13):
        clock.t += 5
        w.recall.latency.observe(0.002)  # <= 0.0025 s
        point = sampler.sample()
    assert point["recall_kafka_p99_ms"] == 2.5  # the slow ones are older than the 60 s window
    clock.t += 5
    point = sampler.sample()  # the window now starts after the first fast one: 12 of them in it
    assert point["recall_kafka_p99_ms"] == 2.5
    clock.t += 65
    point = sampler.sample()
    assert point["recall_kafka_p99_ms"] is None  # nothing in the window: no quantile


def test_quantile_past_the_last_bucket_reads_as_that_bucket(env: tuple[StatusSampler, Workers, Clock, Live]) -> None:
    sampler, w, clock, _ = env
    sampler.sample()
    clock.t += 5
    w.recall.latency.observe(60.0)  # +Inf bucket
    assert sampler.sample()["recall_kafka_p99_ms"] == 5000.0
    json.loads(sampler.encoded())  # strict JSON: no Infinity


def test_swaps_and_rollbacks_are_the_alias_changes(env: tuple[StatusSampler, Workers, Clock, Live]) -> None:
    sampler, _, clock, view = env
    sampler.sample()  # nothing live
    for version in ("v1", "v2", "v2", "v3", "v2"):
        clock.t += 5
        view.view = live(version)
        sampler.sample()
    events = status(sampler)["events"]
    assert [(e["kind"], e["from"], e["to"]) for e in events] == [
        ("swap", "v1", "v2"),
        ("swap", "v2", "v3"),
        ("rollback", "v3", "v2"),
    ]
    clock.t += EVENTS_S + 1
    sampler.sample()
    assert status(sampler)["events"] == []  # an hour later


def test_a_worker_down_leaves_its_figures_blank(env: tuple[StatusSampler, Workers, Clock, Live]) -> None:
    sampler, w, clock, _ = env
    w.ingest.applied.inc(10)
    sampler.sample()
    w.down.add("ingest")
    clock.t += 5
    point = sampler.sample()
    assert point["clicks_per_s"] is None and point["ingest_lag"] is None and point["dlq_total"] is None
    s = status(sampler)
    ingest = s["workers"]["ingest"]
    assert ingest["up"] is False and "ingest is down" in ingest["error"]
    assert s["workers"]["refresh"]["up"] is True
    w.down.clear()
    clock.t += 5
    w.ingest.applied.inc(50)
    sampler.sample()
    clock.t += 5
    assert sampler.sample()["clicks_per_s"] == 0.0  # back: rates again from its own counters


def test_history_keeps_fifteen_minutes(env: tuple[StatusSampler, Workers, Clock, Live]) -> None:
    sampler, _, clock, _ = env
    for _ in range(400):
        sampler.sample()
        clock.t += 5
    t = status(sampler)["series"]["t"]
    assert t[-1] - t[0] <= HISTORY_S and len(t) == int(HISTORY_S / 5) + 1
    assert len(sampler.samples) <= 60 / 5 + 2  # raw samples: only the quantile window
