"""``mindstream_gc_pause_seconds{generation}``: each collection observed once, under its generation."""

from __future__ import annotations

import gc

from prometheus_client import CollectorRegistry

from workers.metrics import GcPauses


def _count(registry: CollectorRegistry, generation: int) -> float:
    value = registry.get_sample_value("mindstream_gc_pause_seconds_count", {"generation": str(generation)})
    return value or 0.0


def test_every_collection_is_observed_under_its_generation_until_uninstalled() -> None:
    registry = CollectorRegistry()
    pauses = GcPauses(registry)
    assert [_count(registry, g) for g in range(3)] == [0, 0, 0]  # the series exist from the start
    pauses.install()
    pauses.install()  # idempotent: one hook
    try:
        before = [_count(registry, g) for g in range(3)]
        gc.collect(2)
        gc.collect(0)
        after = [_count(registry, g) for g in range(3)]
    finally:
        pauses.uninstall()
    assert after[2] - before[2] >= 1 and after[0] - before[0] >= 1  # automatic collections may add more
    assert pauses._callback not in gc.callbacks
    gc.collect(2)
    assert _count(registry, 2) == after[2]  # uninstalled: no longer observed
    total = registry.get_sample_value("mindstream_gc_pause_seconds_sum", {"generation": "2"})
    assert total is not None and 0 < total < 5
