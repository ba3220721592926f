"""Where recall time goes while the refresh worker works, and while it does not: per-second samples.

:class:`StageSampler` (a thread of the benchmark process) scrapes, once per ``every_s`` (1 s), three
``/metrics`` endpoints: the recall worker's (the Kafka path) and the gateway's (the HTTP path)
``mindstream_recall_stage_seconds{stage}`` buckets, and the refresh worker's activity gauge and
counter (``mindstream_refresh_activity{activity}``, ``mindstream_refresh_activity_started_total
{activity}``, :mod:`workers.refresh.metrics`), and its live model's age (``mindstream_live_model_age_seconds``,
kept per second for a percentile over the run). Only those lines of each page are parsed.

Each interval between two consecutive samples is **busy** when one of the activities that count
(default: every one of :data:`~workers.refresh.metrics.ACTIVITIES`) had its gauge at 1 at either end
or its counter moved during it (one shorter than the sampling period is seen that way), else
**quiet**; an interval with the refresh worker's page missing at either end is left out of both
(``None``). The interval's stage observations are the bucket deltas between its two samples, per
path (left out for a path whose page is missing at either end, or whose counts went down: a
restarted worker).

Per class, the deltas of its intervals are summed and each stage's quantile is read from the sums
as :func:`workers.status.window_quantile` reads a window: the upper bound of the bucket holding it
(no interpolation inside a bucket), in ms. A quantile in the ``+Inf`` bucket reads as the last
finite bound (10 s): the histogram only says "more". An interval belongs to the window holding its
midpoint; a request to the interval holding its send time (:func:`request_classes`).
"""

from __future__ import annotations

import bisect
import contextlib
import math
import threading
import time
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from workers.recall.metrics import STAGE_BUCKETS, STAGES
from workers.refresh.metrics import ACTIVITIES
from workers.status import window_quantile

PATHS: Final = ("kafka", "http")  # the recall worker's endpoint, the gateway's
REFRESH: Final = "refresh"
BUSY: Final = "busy"
QUIET: Final = "quiet"
CLASSES: Final = (BUSY, QUIET)
LES: Final = (*map(float, STAGE_BUCKETS), math.inf)
Q: Final = 0.99
EVERY_S: Final = 1.0
SCRAPE_TIMEOUT_S: Final = 0.5  # three pages in well under the period, a hung one included
STAGE_BUCKET: Final = "mindstream_recall_stage_seconds_bucket"
ACTIVITY_GAUGE: Final = "mindstream_refresh_activity"
ACTIVITY_STARTED: Final = "mindstream_refresh_activity_started_total"
MODEL_AGE: Final = "mindstream_live_model_age_seconds"


@dataclass(frozen=True)
class Activity:
    """The refresh worker's activity at one scrape: gauge and started counter per activity."""

    active: Mapping[str, float]
    started: Mapping[str, float]


@dataclass(frozen=True)
class Sample:
    """One scrape: when (monotonic s), each path's cumulative stage buckets (``len(STAGES) x len(LES)``;
    a path whose page did not answer is absent), the refresh activity and the live model's age (None:
    no answer, or no such line)."""

    t: float
    stages: Mapping[str, np.ndarray]
    activity: Activity | None
    model_age_s: float | None = None


@dataclass(frozen=True)
class Interval:
    """Between two samples: its class (``busy`` True/False, None: unknown), the activities seen and
    each path's stage observations (bucket counts, cumulative over ``le``, as the samples hold)."""

    start: float
    end: float
    busy: bool | None
    activities: frozenset[str]
    deltas: Mapping[str, np.ndarray]

    @property
    def seconds(self) -> float:
        return self.end - self.start

    @property
    def label(self) -> str | None:
        return None if self.busy is None else BUSY if self.busy else QUIET


# -- parsing one page -------------------------------------------------------------------------------


def _samples(text: str, names: Sequence[str]) -> Iterable[tuple[str, dict[str, str], float]]:
    """(name, labels, value) of the lines whose sample name is one of ``names``."""
    wanted = tuple(f"{name}{end}" for name in names for end in ("{", " "))
    lines = "\n".join(line for line in text.splitlines() if line.startswith(wanted))
    for family in text_string_to_metric_families(lines + "\n"):
        for s in family.samples:
            yield s.name, s.labels, float(s.value)


def parse_stages(text: str) -> np.ndarray:
    """A page's ``mindstream_recall_stage_seconds`` buckets: cumulative counts, ``STAGES x LES`` (other
    labels summed; an unknown stage or bound is ignored, a missing one reads 0)."""
    out = np.zeros((len(STAGES), len(LES)))
    rows = {stage: i for i, stage in enumerate(STAGES)}
    cols = {le: j for j, le in enumerate(LES)}
    for _, labels, value in _samples(text, (STAGE_BUCKET,)):
        i, j = rows.get(labels.get("stage", "")), cols.get(float(labels.get("le", "nan")))
        if i is not None and j is not None:
            out[i, j] += value
    return out


def parse_activity(text: str) -> Activity:
    """A page's refresh activity gauge and started counter (an activity absent from it reads 0)."""
    active = dict.fromkeys(ACTIVITIES, 0.0)
    started = dict.fromkeys(ACTIVITIES, 0.0)
    for name, labels, value in _samples(text, (ACTIVITY_GAUGE, ACTIVITY_STARTED)):
        activity = labels.get("activity")
        if activity in active:
            (active if name == ACTIVITY_GAUGE else started)[activity] = value
    return Activity(active, started)


def parse_model_age(text: str) -> float | None:
    """A page's ``mindstream_live_model_age_seconds``; None without one."""
    return next((value for _, _, value in _samples(text, (MODEL_AGE,))), None)


# -- intervals ----------------------------------------------------------------------------------------


def seen_activities(a: Activity, b: Activity) -> frozenset[str]:
    """The activities in progress at either end (gauge above 0) or started between (counter moved;
    a counter that went back, a restarted worker, moved too)."""
    return frozenset(x for x in ACTIVITIES if a.active[x] > 0 or b.active[x] > 0 or b.started[x] != a.started[x])


def interval(a: Sample, b: Sample, busy_activities: Sequence[str] = ACTIVITIES) -> Interval:
    """The interval from ``a`` to ``b``: busy when one of ``busy_activities`` was seen in it."""
    if a.activity is None or b.activity is None:
        busy, seen = None, frozenset[str]()
    else:
        seen = seen_activities(a.activity, b.activity)
        busy = bool(seen & set(busy_activities))
    deltas = {}
    for path in PATHS:
        if path in a.stages and path in b.stages:
            delta = b.stages[path] - a.stages[path]
            if (delta >= 0).all():
                deltas[path] = delta
    return Interval(a.t, b.t, busy, seen, deltas)


def in_window(intervals: Iterable[Interval], lo: float, hi: float) -> list[Interval]:
    """The intervals whose midpoint lies in ``[lo, hi)``."""
    return [iv for iv in intervals if lo <= (iv.start + iv.end) / 2 < hi]


# -- per class ----------------------------------------------------------------------------------------


def class_buckets(intervals: Iterable[Interval], path: str, label: str) -> np.ndarray:
    """The summed stage bucket deltas of ``path`` over the intervals of class ``label``."""
    total = np.zeros((len(STAGES), len(LES)))
    for iv in intervals:
        if iv.label == label and path in iv.deltas:
            total += iv.deltas[path]
    return total


def _quantile_bound(cumulative: np.ndarray, q: float) -> float | None:
    """:func:`workers.status.window_quantile` of one stage's cumulative counts: a bound of ``LES``."""
    return window_quantile([], list(zip(LES, cumulative.tolist(), strict=True)), q)


def _ms(bound: float) -> float:
    return round(1000 * min(bound, LES[-2]), 3)


def bucket_quantile_ms(cumulative: np.ndarray, q: float = Q) -> float | None:
    """``q`` of one stage's cumulative bucket counts (``LES``), in ms; None with no observation."""
    bound = _quantile_bound(cumulative, q)
    return None if bound is None else _ms(bound)


def stage_quantiles(buckets: np.ndarray, q: float = Q) -> dict[str, float | None]:
    """Stage -> ``q`` in ms of summed buckets (``STAGES x LES``)."""
    return {stage: bucket_quantile_ms(buckets[i], q) for i, stage in enumerate(STAGES)}


def largest_stage(candidates: Mapping[tuple[str, str], np.ndarray], q: float = Q) -> tuple[str, str] | None:
    """The ``(path, stage)`` whose ``q`` is largest among ``candidates`` (cumulative buckets per key).

    Bucket quantiles tie often (two stages in the same bucket): then the one with the larger share of
    its observations in that bucket or above it wins (it holds more of the tail), then the first in
    the order given. None when no candidate observed anything."""
    best: tuple[float, float, int] | None = None
    chosen: tuple[str, str] | None = None
    for order, (key, cumulative) in enumerate(candidates.items()):
        bound = _quantile_bound(cumulative, q)
        if bound is None:
            continue
        j = LES.index(bound)
        below = cumulative[j - 1] if j > 0 else 0.0
        rank = (_ms(bound), float((cumulative[-1] - below) / cumulative[-1]), -order)
        if best is None or rank > best:
            best, chosen = rank, key
    return chosen


def busy_share(intervals: Iterable[Interval]) -> float | None:
    """The busy seconds' share of the classified seconds; None with none classified."""
    classified = [iv for iv in intervals if iv.busy is not None]
    seconds = sum(iv.seconds for iv in classified)
    return round(sum(iv.seconds for iv in classified if iv.busy) / seconds, 4) if seconds > 0 else None


def activity_share(intervals: Iterable[Interval]) -> dict[str, float | None]:
    """Per activity: the share of the classified seconds in which it was seen."""
    classified = [iv for iv in intervals if iv.busy is not None]
    seconds = sum(iv.seconds for iv in classified)
    return {
        a: round(sum(iv.seconds for iv in classified if a in iv.activities) / seconds, 4) if seconds > 0 else None
        for a in ACTIVITIES
    }


def request_classes(intervals: Sequence[Interval], sent: Sequence[float]) -> list[str | None]:
    """The class of the interval holding each send time (monotonic s); None outside every interval or
    in an unclassified one. ``intervals`` in time order, each starting where the previous ended."""
    starts = [iv.start for iv in intervals]
    out: list[str | None] = []
    for t in sent:
        i = bisect.bisect_right(starts, t) - 1
        out.append(intervals[i].label if i >= 0 and t < intervals[i].end else None)
    return out


def stage_summary(intervals: Sequence[Interval], q: float = Q) -> dict[str, object]:
    """What a window (or the whole run) adds: ``stages`` (path -> class -> stage -> ``q`` ms),
    ``busy_share``, ``activity_share``, ``p99_stage_busy`` (path -> the stage of the largest busy
    ``q``, :func:`largest_stage`), ``p99_stage_busy_overall`` (``{"path", "stage"}`` across both
    paths), ``sampled_s``, ``unclassified_s`` (no refresh page at an end) and ``stage_gaps_s`` (path ->
    seconds without its stage deltas: its page missing at an end, or a restart)."""
    buckets = {(path, label): class_buckets(intervals, path, label) for path in PATHS for label in CLASSES}
    per_path: dict[str, str | None] = {}
    for path in PATHS:
        key = largest_stage({(path, s): buckets[path, BUSY][i] for i, s in enumerate(STAGES)}, q)
        per_path[path] = key[1] if key else None
    overall = largest_stage({(p, s): buckets[p, BUSY][i] for p in PATHS for i, s in enumerate(STAGES)}, q)
    return {
        "stages": {path: {label: stage_quantiles(buckets[path, label], q) for label in CLASSES} for path in PATHS},
        "busy_share": busy_share(intervals),
        "activity_share": activity_share(intervals),
        "p99_stage_busy": per_path,
        "p99_stage_busy_overall": {"path": overall[0], "stage": overall[1]} if overall else None,
        "sampled_s": round(sum(iv.seconds for iv in intervals), 1),
        "unclassified_s": round(sum(iv.seconds for iv in intervals if iv.busy is None), 1),
        "stage_gaps_s": {
            path: round(sum(iv.seconds for iv in intervals if path not in iv.deltas), 1) for path in PATHS
        },
    }


# -- the sampler ----------------------------------------------------------------------------------------


def _page(url: str, timeout: float) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            text: str = response.read().decode()
            return text
    except (OSError, ValueError):
        return None


class StageSampler:
    """``urls``: ``kafka``, ``http`` and ``refresh`` -> a ``/metrics`` URL. ``start()``, then
    :meth:`intervals` at any time, ``stop()`` at the end. Keeps one small array per path and interval
    (about 2 KB: 15 MB over 2 h), not the pages."""

    def __init__(
        self,
        urls: Mapping[str, str],
        *,
        every_s: float = EVERY_S,
        timeout_s: float = SCRAPE_TIMEOUT_S,
        busy_activities: Sequence[str] = ACTIVITIES,
    ) -> None:
        unknown = set(busy_activities) - set(ACTIVITIES)
        if unknown:
            raise ValueError(f"unknown activities {sorted(unknown)}: not in {ACTIVITIES}")
        self.urls = dict(urls)
        self.every_s = every_s
        self.timeout_s = timeout_s
        self.busy_activities = tuple(busy_activities)
        self._lock = threading.Lock()
        self._intervals: list[Interval] = []
        self._ages: list[tuple[float, float]] = []  # (t, live model age s) of each sample that had one
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="stage-sampler", daemon=True)
        self.scrapes = 0  # samples taken (each scrapes the three pages)

    def sample(self) -> Sample:
        """One scrape of the three pages (the refresh worker's first: its time is the sample's); a page
        that does not answer in time, or does not parse, counts as missing."""
        t = time.monotonic()
        self.scrapes += 1
        refresh = _page(self.urls[REFRESH], self.timeout_s)
        stages = {}
        for path in PATHS:
            if (text := _page(self.urls[path], self.timeout_s)) is not None:
                with contextlib.suppress(ValueError):
                    stages[path] = parse_stages(text)
        if refresh is not None:
            with contextlib.suppress(ValueError):
                return Sample(t, stages, parse_activity(refresh), parse_model_age(refresh))
        return Sample(t, stages, None)

    def _keep(self, sample: Sample, previous: Sample | None) -> None:
        with self._lock:
            if previous is not None:
                self._intervals.append(interval(previous, sample, self.busy_activities))
            if sample.model_age_s is not None:
                self._ages.append((sample.t, sample.model_age_s))

    def _loop(self) -> None:
        previous = self.sample()
        self._keep(previous, None)
        began = previous.t
        k = 1
        while not self._stop.wait(max(0.0, began + k * self.every_s - time.monotonic())):
            current = self.sample()
            self._keep(current, previous)
            previous = current
            k = max(k + 1, math.ceil((time.monotonic() - began) / self.every_s))  # an overrun skips slots

    def start(self) -> StageSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10 * self.timeout_s + self.every_s)

    def intervals(self, lo: float = -math.inf, hi: float = math.inf) -> list[Interval]:
        """The intervals so far whose midpoint lies in ``[lo, hi)``, in time order."""
        with self._lock:
            return in_window(self._intervals, lo, hi)

    def model_ages(self, lo: float = -math.inf, hi: float = math.inf) -> list[float]:
        """The live model's age (s) at each sample taken in ``[lo, hi)``."""
        with self._lock:
            return [age for t, age in self._ages if lo <= t < hi]
