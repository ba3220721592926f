"""Helpers shared by the benchmarks: machine description, peak RSS, JSON output."""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from workers.infra.vector_store import VectorStore

# MINDSTREAM_BENCH_RESULTS moves the output folder (``bench.run_all --quick`` writes smoke runs elsewhere).
RESULTS = Path(os.environ.get("MINDSTREAM_BENCH_RESULTS") or Path(__file__).resolve().parent / "results")


def machine() -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%d"),
    }


def peak_rss_mb() -> float:
    """Peak resident set size of this process (ru_maxrss is KiB on Linux)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def emit(name: str, payload: dict[str, Any], *, envelope: bool = True) -> None:
    """Print the JSON summary and keep a copy under bench/results/<name>.json; ``envelope`` adds the
    benchmark's name and the machine (off where an issue names the file's exact keys)."""
    if envelope:
        payload = {"benchmark": name, "machine": machine(), **payload}
    text = json.dumps(payload, indent=2, default=str)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(text + "\n")
    sys.stdout.write(text + "\n")


def index_and_load(store: VectorStore, name: str, poll_s: float = 0.2) -> None:
    """Build the index of a flushed collection, wait until every row is indexed, load it."""
    rows = int(store.client.get_collection_stats(name).get("row_count", 0))  # flushed: exact
    store.build_index(name, rows=rows)
    while store.client.describe_index(name, "vector").get("pending_index_rows", 0):
        time.sleep(poll_s)
    store.load(name)
