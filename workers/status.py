"""Reads the workers' Prometheus endpoints for ``mindstream up``'s progress line."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def scrape(url: str, timeout: float = 1.0) -> dict[str, float]:
    """Sample name (with labels summed away) -> value; empty if the endpoint is not up (yet)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            text = response.read().decode()
    except OSError:
        return {}
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[sample.name] = values.get(sample.name, 0.0) + float(sample.value)
    return values


def quantile(latencies_ms: list[float], q: float) -> float | None:
    if not latencies_ms:
        return None
    ordered = sorted(latencies_ms)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


Buckets = dict[str, list[tuple[float, float]]]  # histogram name -> cumulative (le, count), labels summed


def scrape_histograms(url: str, timeout: float = 1.0) -> Buckets:
    """Every histogram's cumulative buckets (labels other than ``le`` summed); empty if not up."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            text = response.read().decode()
    except OSError:
        return {}
    out: dict[str, dict[float, float]] = {}
    for family in text_string_to_metric_families(text):
        if family.type != "histogram":
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                le = float(sample.labels["le"])
                buckets = out.setdefault(family.name, {})
                buckets[le] = buckets.get(le, 0.0) + float(sample.value)
    return {name: sorted(b.items()) for name, b in out.items()}


def window_quantile(before: list[tuple[float, float]], after: list[tuple[float, float]], q: float) -> float | None:
    """``q`` of what a histogram observed between two scrapes: the upper bound of the bucket holding it."""
    if not after:
        return None
    earlier = dict(before)
    delta = [(le, count - earlier.get(le, 0.0)) for le, count in after]
    total = delta[-1][1]
    if total <= 0:
        return None
    for le, count in delta:
        if count >= q * total:
            return le
    return delta[-1][0]
