"""The status behind ``/ui``'s "Now" tab: the workers' own Prometheus metrics, sampled every few seconds.

A background thread of the gateway reads the ``/metrics`` text of the ingest, refresh and recall
workers (the endpoints ``mindstream up``'s progress line reads, ``workers/status.py``) and the
gateway's own registry, plus the live alias as Milvus resolves it. Each sample becomes one point of
the last 15 minutes' series; ``/ui/api/status`` returns the latest encoded JSON, so a poll costs a
lock and a copy, never a scrape: however many pages are open, the workers are read once per period.

What a point holds (``None`` where its source is missing: worker down, histogram empty in the window):

* live (from the alias, not from a worker): version ``v<N>``, collection, item rows (counted once per
  collection and fast-path generation), fast-path generation served here, model age (the version's
  checkpoint ``created_at``);
* ingest: clicks applied per second (``mindstream_ingest_events_applied_total``, over one period),
  consumer lag summed over partitions (``mindstream_consumer_lag``), DLQ total;
* freshness p50 / p99 over the last ``window_s`` (the progress line's 60 s): user side
  (``mindstream_freshness_user_seconds``), new item (``mindstream_freshness_new_item_seconds``),
  click -> version (``mindstream_freshness_click_to_version_seconds``);
* recall latency p50 / p99 (ms) over the same window: Kafka path from the recall worker's
  ``mindstream_recall_latency_seconds``, HTTP path from the gateway's
  ``mindstream_http_request_duration_seconds{endpoint="/rec/recall"}``; requests per second of each.

Quantiles are histogram bucket upper bounds (as in the progress line): "p99 <= 0.025 s"; a quantile
past the last finite bucket reads as that bucket. Swaps and rollbacks are the changes of the
alias's version between samples (a higher version is a swap, a lower one a rollback), kept an hour.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from workers.status import window_quantile

__all__ = [
    "HISTORY_S",
    "SERIES",
    "LiveView",
    "Sample",
    "StatusSampler",
    "http_source",
    "parse_metrics",
    "registry_source",
]

log = logging.getLogger(__name__)

HISTORY_S: Final = 15 * 60.0  # the charts' span
EVENTS_S: Final = 3600.0  # swaps and rollbacks listed
DLQ_REASONS_SHOWN: Final = 5
WORKERS: Final = ("ingest", "refresh", "recall", "gateway")

Source = Callable[[], str]  # the exposition text of one worker's /metrics; raises when it is not up
Samples = dict[str, list[tuple[dict[str, str], float]]]  # sample name -> (labels, value) pairs

# histogram key -> (worker, family name, label filter)
HISTOGRAMS: Final[dict[str, tuple[str, str, dict[str, str]]]] = {
    "fresh_user": ("ingest", "mindstream_freshness_user_seconds", {}),
    "fresh_new_item": ("refresh", "mindstream_freshness_new_item_seconds", {}),
    "fresh_click_version": ("refresh", "mindstream_freshness_click_to_version_seconds", {}),
    "recall_kafka": ("recall", "mindstream_recall_latency_seconds", {}),
    "recall_http": ("gateway", "mindstream_http_request_duration_seconds", {"endpoint": "/rec/recall"}),
}
# the series of every point, in the JSON's column order
SERIES: Final = (
    "version",
    "generation",
    "items",
    "age_s",
    "clicks_per_s",
    "ingest_lag",
    "dlq_total",
    "fresh_user_p50",
    "fresh_user_p99",
    "fresh_new_item_p50",
    "fresh_new_item_p99",
    "fresh_click_version_p50",
    "fresh_click_version_p99",
    "recall_kafka_p50_ms",
    "recall_kafka_p99_ms",
    "recall_kafka_per_s",
    "recall_http_p50_ms",
    "recall_http_p99_ms",
    "recall_http_per_s",
)


_SUFFIXES: Final = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum")}


def parse_metrics(text: str) -> Samples:
    """Every sample of a ``/metrics`` text, by sample name, with its labels."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for suffix in _SUFFIXES.get(family.type, ()):  # exported without samples yet (no label set): zero
            out.setdefault(family.name + suffix, [])
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    return out


def _matches(labels: Mapping[str, str], wanted: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in wanted.items())


def total(samples: Samples | None, name: str, **wanted: str) -> float | None:
    """Sum of ``name`` over the label sets matching ``wanted``; None when the worker or the sample is absent."""
    if samples is None or name not in samples:
        return None
    return sum(v for labels, v in samples[name] if _matches(labels, wanted))


def by_label(samples: Samples | None, name: str, label: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for labels, value in (samples or {}).get(name, []):
        key = labels.get(label, "")
        out[key] = out.get(key, 0.0) + value
    return out


def buckets(samples: Samples | None, family: str, wanted: Mapping[str, str]) -> list[tuple[float, float]] | None:
    """Cumulative ``(le, count)`` of a histogram, labels other than ``le`` summed; None when absent."""
    if samples is None or f"{family}_bucket" not in samples:
        return None
    acc: dict[float, float] = {}
    for labels, value in samples[f"{family}_bucket"]:
        if _matches(labels, wanted):
            le = float(labels["le"])
            acc[le] = acc.get(le, 0.0) + value
    return sorted(acc.items()) or None


def http_source(url: str, timeout_s: float = 1.0) -> Source:
    def read() -> str:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return str(response.read().decode())

    return read


def registry_source(registry: CollectorRegistry) -> Source:
    return lambda: generate_latest(registry).decode()


@dataclass(frozen=True)
class LiveView:
    """The live alias as this gateway sees it."""

    state: str  # "live", "none" (no alias yet) or "error" (Milvus not answering)
    message: str = ""
    collection: str | None = None
    version: str | None = None
    generation: int | None = None
    items: int | None = None
    created_at: float | None = None


@dataclass
class Sample:
    """One reading of every source at time ``t``."""

    t: float
    live: LiveView
    metrics: dict[str, Samples | None]  # worker -> samples, None when its endpoint did not answer
    errors: dict[str, str]  # worker -> why it did not answer
    histograms: dict[str, list[tuple[float, float]] | None] = field(default_factory=dict)


def _number(version: str | None) -> int | None:
    return int(version[1:]) if version and version[1:].isdigit() else None


def _finite(value: float | None, bounds: list[tuple[float, float]] | None) -> float | None:
    """A quantile as a number JSON can carry: +Inf becomes the largest finite bucket bound."""
    if value is None or not math.isinf(value):
        return value
    finite = [le for le, _ in bounds or [] if not math.isinf(le)]
    return finite[-1] if finite else None


class StatusSampler:
    """Samples ``sources`` and ``live`` every ``sample_s`` seconds (in a thread once :meth:`start` ed)."""

    def __init__(
        self,
        sources: Mapping[str, Source],
        live: Callable[[], LiveView],
        *,
        sample_s: float = 5.0,
        window_s: float = 60.0,
        urls: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.sources = dict(sources)
        self.live = live
        self.sample_s = sample_s
        self.window_s = window_s
        self.urls = dict(urls or {})
        self.clock = clock
        self.samples: deque[Sample] = deque()
        self.points: deque[dict[str, Any]] = deque()
        self.events: deque[dict[str, Any]] = deque()
        self.dlq_seen: dict[str, tuple[float, float]] = {}  # reason -> (count, time it last grew)
        self._dlq_read = False
        self.cost_ms: deque[tuple[float, float]] = deque(maxlen=60)  # (wall, thread CPU) per sample
        self._lock = threading.Lock()
        self._sampling = threading.Lock()
        self._encoded: bytes | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the thread ---------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ui-status", daemon=True)
            self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            try:
                self.sample()
            except Exception:
                log.exception("ui status sample failed")
            if self._stop.wait(self.sample_s):
                return

    # -- one sample ---------------------------------------------------------------------------

    def sample(self) -> dict[str, Any]:
        """Read every source now, append a point, re-encode the status; returns the point."""
        with self._sampling:
            wall, cpu = time.perf_counter(), time.thread_time()
            metrics: dict[str, Samples | None] = {}
            errors: dict[str, str] = {}
            for worker, source in self.sources.items():
                try:
                    metrics[worker] = parse_metrics(source())
                except Exception as exc:
                    metrics[worker] = None
                    errors[worker] = f"{type(exc).__name__}: {exc}"
            live = self.live()
            now = self.clock()
            sample = Sample(now, live, metrics, errors)
            for key, (worker, family, wanted) in HISTOGRAMS.items():
                sample.histograms[key] = buckets(metrics.get(worker), family, wanted)
            with self._lock:
                point = self._point(sample)
                self._track_events(sample)
                self._track_dlq(sample)
                self.samples.append(sample)
                while len(self.samples) > 2 and self.samples[1].t <= now - max(self.window_s, self.sample_s * 2):
                    self.samples.popleft()
                self.points.append(point)
                while self.points and self.points[0]["t"] < now - HISTORY_S:
                    self.points.popleft()
                while self.events and self.events[0]["t"] < now - EVENTS_S:
                    self.events.popleft()
                self.cost_ms.append(((time.perf_counter() - wall) * 1000, (time.thread_time() - cpu) * 1000))
                self._encoded = json.dumps(self._status(sample), allow_nan=False).encode()
            return point

    def _previous(self) -> Sample | None:
        return self.samples[-1] if self.samples else None

    def _window_start(self, now: float) -> Sample | None:
        """The newest sample at least ``window_s`` old, else the oldest one."""
        chosen = self.samples[0] if self.samples else None
        for s in self.samples:
            if s.t <= now - self.window_s:
                chosen = s
        return chosen

    def _point(self, sample: Sample) -> dict[str, Any]:
        live, m = sample.live, sample.metrics
        prev, start = self._previous(), self._window_start(sample.t)
        point: dict[str, Any] = {"t": round(sample.t, 3)}
        point["version"] = _number(live.version)
        point["generation"] = live.generation
        point["items"] = live.items
        point["age_s"] = None if live.created_at is None else round(max(sample.t - live.created_at, 0.0), 1)

        def rate(worker: str, name: str, **wanted: str) -> float | None:
            now_v = total(m.get(worker), name, **wanted)
            then = total(prev.metrics.get(worker), name, **wanted) if prev is not None else None
            if now_v is None or then is None or prev is None or sample.t <= prev.t or now_v < then:
                return None  # first sample, worker (re)started, or not exported
            return round((now_v - then) / (sample.t - prev.t), 3)

        point["clicks_per_s"] = rate("ingest", "mindstream_ingest_events_applied_total")
        point["ingest_lag"] = total(m.get("ingest"), "mindstream_consumer_lag")
        point["dlq_total"] = total(m.get("ingest"), "mindstream_dlq_messages_total")
        point["recall_kafka_per_s"] = rate("recall", "mindstream_recall_requests_total")
        point["recall_http_per_s"] = rate(
            "gateway", "mindstream_http_requests_total", endpoint="/rec/recall", method="POST"
        )
        for key in HISTOGRAMS:
            after = sample.histograms.get(key)
            before = start.histograms.get(key) if start is not None else None
            scale, suffix = (1000.0, "_ms") if key.startswith("recall") else (1.0, "")
            for q, name in ((0.5, "p50"), (0.99, "p99")):
                value = None
                if after is not None:
                    # a source that restarted has counts below the window's start: use its own counts
                    base = before if before is not None and before[-1][1] <= after[-1][1] else []
                    value = _finite(window_quantile(base, after, q), after)
                point[f"{key}_{name}{suffix}"] = None if value is None else round(value * scale, 6)
        return point

    def _track_events(self, sample: Sample) -> None:
        prev = self._previous()
        before, after = (prev.live.collection if prev else None), sample.live.collection
        if prev is None or after is None or before == after or prev.live.state != "live":
            return
        old, new = _number(prev.live.version), _number(sample.live.version)
        kind = "rollback" if old is not None and new is not None and new < old else "swap"
        self.events.append(
            {"t": round(sample.t, 3), "kind": kind, "from": prev.live.version, "to": sample.live.version}
        )

    def _track_dlq(self, sample: Sample) -> None:
        """Per reason: its count and when it last grew (0: before the first sample of the ingest worker)."""
        ingest = sample.metrics.get("ingest")
        if ingest is None:
            return
        first, self._dlq_read = not self._dlq_read, True
        for reason, count in by_label(ingest, "mindstream_dlq_messages_total", "reason").items():
            seen = self.dlq_seen.get(reason)
            if seen is None:
                self.dlq_seen[reason] = (count, 0.0 if first else sample.t)
            elif count > seen[0]:
                self.dlq_seen[reason] = (count, sample.t)
            elif count < seen[0]:  # the ingest worker restarted: its counters began again
                self.dlq_seen[reason] = (count, seen[1])

    # -- what the page reads ------------------------------------------------------------------

    def _status(self, sample: Sample) -> dict[str, Any]:
        live = sample.live
        refresh = sample.metrics.get("refresh")
        workers = {
            w: {
                "up": sample.metrics.get(w) is not None,
                "url": self.urls.get(w),
                "error": sample.errors.get(w),
                "configured": w in self.sources,
            }
            for w in WORKERS
        }
        reasons = sorted(self.dlq_seen.items(), key=lambda kv: (-kv[1][1], -kv[1][0]))
        costs = list(self.cost_ms)
        return {
            "now": round(sample.t, 3),
            "sample_s": self.sample_s,
            "window_s": self.window_s,
            "history_s": HISTORY_S,
            "live": {
                "state": live.state,
                "message": live.message,
                "collection": live.collection,
                "version": live.version,
                "generation": live.generation,
                "items": live.items,
                "created_at": live.created_at,
                "age_s": self.points[-1]["age_s"] if self.points else None,
            },
            "workers": workers,
            "swaps_total": total(refresh, "mindstream_swaps_total"),
            "swap_failures_total": total(refresh, "mindstream_swap_failures_total"),
            "events": list(self.events),
            "dlq": {
                "total": total(sample.metrics.get("ingest"), "mindstream_dlq_messages_total"),
                "reasons": [
                    {"reason": r, "count": c, "last_t": round(t, 3) if t else None}
                    for r, (c, t) in reasons[:DLQ_REASONS_SHOWN]
                ],
            },
            "current": self.points[-1] if self.points else {},
            "series": {key: [p.get(key) for p in self.points] for key in ("t", *SERIES)},
            "sampler": {
                "samples": len(self.points),
                "wall_ms_mean": round(sum(w for w, _ in costs) / len(costs), 3) if costs else None,
                "cpu_ms_mean": round(sum(c for _, c in costs) / len(costs), 3) if costs else None,
            },
        }

    def encoded(self) -> bytes:
        """The latest status as JSON bytes; samples once if nothing was sampled yet."""
        with self._lock:
            encoded = self._encoded
        if encoded is None:
            self.sample()
            with self._lock:
                encoded = self._encoded
        assert encoded is not None
        return encoded
