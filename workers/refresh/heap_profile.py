"""Opt-in heap profile of the refresh worker (``MINDSTREAM_REFRESH__HEAP_PROFILE=true``): where its memory
goes over a long run, round after round.

With it on, the worker starts :mod:`tracemalloc` (``frames`` deep) and, after every major round, once the
round's memory is released (a full collection and ``malloc_trim``), records one sample: the process' RSS
and anonymous memory, what Python's allocators hold (``traced_mb``: Python objects and numpy arrays, which
report their buffers to tracemalloc) and the rest (``untraced_mb`` = RSS - traced: the interpreter, the
shared libraries' pages, Paddle's own allocator, glibc's arenas). The first sample after ``baseline_rounds``
rounds is the baseline (imports, Paddle's kernels and caches settle during the first rounds); each later
sample lists the ``top`` source lines whose live allocations grew most since the baseline. A Python-side leak
shows as a line whose growth rises round after round; a flat ``traced_mb`` beside a rising ``untraced_mb``
puts the growth outside Python (Paddle, glibc).

The profile is one JSON file, rewritten after every round (atomically): ``<refresh dir>/heap_profile.json``.
tracemalloc slows Python's allocations (a few percent to 2x for allocation-heavy code) and a snapshot takes
up to a second at a few hundred MB of traced memory: a diagnostic, off by default.
"""

from __future__ import annotations

import json
import os
import time
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import psutil

__all__ = ["FILE_NAME", "HeapProfile"]

FILE_NAME: Final = "heap_profile.json"
_MB: Final = 2**20
# Frames of the profiler itself and of the import machinery are noise in every diff.
_IGNORED: Final = (
    tracemalloc.Filter(False, tracemalloc.__file__),
    tracemalloc.Filter(False, "<frozen importlib._bootstrap*>"),
)


def _uss_mb(process: psutil.Process) -> float | None:
    """Unique set size: the pages only this process holds (its heaps, arenas and Paddle's pools, not the
    shared libraries' pages), where the OS tells (Linux: from smaps)."""
    try:
        return round(process.memory_full_info().uss / _MB, 1)
    except (psutil.Error, AttributeError):
        return None


@dataclass
class HeapProfile:
    """Samples after each round; :meth:`start` before the first round, :meth:`after_round` after each."""

    path: Path
    frames: int = 5
    top: int = 15
    baseline_rounds: int = 1
    samples: list[dict[str, Any]] = field(default_factory=list)
    _baseline: tracemalloc.Snapshot | None = None
    _rounds: int = 0
    _process: psutil.Process = field(default_factory=psutil.Process)

    def start(self) -> None:
        if not tracemalloc.is_tracing():
            tracemalloc.start(self.frames)

    def stop(self) -> None:
        tracemalloc.stop()

    def after_round(self) -> dict[str, Any]:
        """One sample (also appended to :attr:`samples` and written to :attr:`path`)."""
        began = time.perf_counter()
        self._rounds += 1
        traced, peak = tracemalloc.get_traced_memory()
        rss = self._process.memory_info().rss
        snapshot = tracemalloc.take_snapshot().filter_traces(_IGNORED)
        sample: dict[str, Any] = {
            "round": self._rounds,
            "time": time.time(),
            "rss_mb": round(rss / _MB, 1),
            "uss_mb": _uss_mb(self._process),
            "traced_mb": round(traced / _MB, 1),
            "traced_peak_mb": round(peak / _MB, 1),
            "untraced_mb": round((rss - traced) / _MB, 1),
        }
        if self._baseline is None and self._rounds >= self.baseline_rounds:
            self._baseline = snapshot
            sample["baseline"] = True
        elif self._baseline is not None:
            sample["growth_since_baseline"] = growth(snapshot, self._baseline, self.top)
        tracemalloc.reset_peak()
        sample["profile_seconds"] = round(time.perf_counter() - began, 3)
        self.samples.append(sample)
        self.write()
        return sample

    def write(self) -> None:
        payload = {"frames": self.frames, "baseline_rounds": self.baseline_rounds, "samples": self.samples}
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, self.path)


def growth(snapshot: tracemalloc.Snapshot, baseline: tracemalloc.Snapshot, top: int) -> list[dict[str, Any]]:
    """The ``top`` source lines whose live allocations grew most from ``baseline`` to ``snapshot``."""
    grown = sorted((s for s in snapshot.compare_to(baseline, "lineno") if s.size_diff > 0), key=lambda s: -s.size_diff)
    return [
        {
            "where": f"{stat.traceback[0].filename}:{stat.traceback[0].lineno}",
            "size_kb": round(stat.size / 1024, 1),
            "growth_kb": round(stat.size_diff / 1024, 1),
            "blocks_growth": stat.count_diff,
        }
        for stat in grown[:top]
    ]
