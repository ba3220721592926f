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
