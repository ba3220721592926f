"""Catalogue scale: what delta publication costs and serves at 100k and 1M items, in one file.

    python -m bench.catalogue_scale [--threshold 0.1]

Assembles ``bench/results/catalogue_scale.json`` (exactly the keys below, under ``"100k"`` and ``"1m"``)
from the results of the benchmarks that measure each figure; a figure whose run is missing is
``null``, never guessed:

* ``rows_written_share_p50``, ``served_recall_at_50``, ``full_publish_recall_at_50``:
  ``bench.delta_publication`` (``delta_publication.json``, ``delta_publication_1m.json``) at the
  threshold given (the setting's default);
* ``model_age_p99_s``, ``new_item_p99_s``, ``round_s_p50``: ``bench.freshness`` on the delta stack
  (``freshness_delta.json``, ``freshness_delta_1m.json``);
* ``milvus_cpu_cores`` (Milvus' mean CPU cores over the soak's windows), ``kafka_p99_ms_max_window``,
  ``http_p99_ms_max_window``: the serving soak (``serving_under_load.json`` and its details,
  ``..._1m``), when it ran on delta publication;
* ``http_p99_ms_idle_at_100``: ``bench.http_latency`` at 100 req/s (``http_latency_delta.json``, ``..._1m.json``).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from bench.common import RESULTS, emit
from workers.settings import RefreshSettings

KEYS = (
    "items",
    "rows_written_share_p50",
    "served_recall_at_50",
    "full_publish_recall_at_50",
    "model_age_p99_s",
    "new_item_p99_s",
    "round_s_p50",
    "milvus_cpu_cores",
    "kafka_p99_ms_max_window",
    "http_p99_ms_max_window",
    "http_p99_ms_idle_at_100",
)
SCALES = {"100k": ("", 100_000), "1m": ("_1m", 1_000_000)}
DELTAS_SINCE = "2026-12-08"  # delta publication the default from this date on


def _read(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _dig(data: dict[str, Any] | None, *path: str) -> Any:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def _on_deltas(result: dict[str, Any] | None) -> bool:
    """A result of a run on delta publication (dated on or after its landing: earlier soaks rebuilt the
    catalogue every round)."""
    date = str(_dig(result, "machine", "date") or "")
    return date >= DELTAS_SINCE


def scale(suffix: str, items: int, threshold: float) -> dict[str, Any]:
    """The figures of one catalogue size, ``None`` where no run measured them."""
    delta = _read(f"delta_publication{suffix}")
    at = _dig(delta, "by_threshold", str(threshold))
    fresh = _read(f"freshness_delta{suffix}")
    soak = _read(f"serving_under_load{suffix}")
    soak_details = _read(f"serving_under_load{suffix}_details")  # the summary holds exactly its keys: no date
    series = _dig(soak_details, "series") or []
    milvus = [w["cpu_cores"]["milvus"] for w in series if (w.get("cpu_cores") or {}).get("milvus") is not None]
    idle = _read(f"http_latency_delta{suffix}")
    idle_100 = next((r for r in _dig(idle, "rates") or [] if r.get("rate") == 100), None)
    out: dict[str, Any] = {
        "items": (delta or {}).get("items", items),
        "rows_written_share_p50": _dig(at, "rows_written_share_p50"),
        "served_recall_at_50": _dig(at, "served_recall_at_50_last"),
        "full_publish_recall_at_50": _dig(at, "full_publish_recall_at_50_last"),
        "model_age_p99_s": _dig(fresh, "model_age_p99_s"),
        "new_item_p99_s": _dig(fresh, "new_item_p99_s"),
        "round_s_p50": _dig(fresh, "round_s", "p50"),
        "milvus_cpu_cores": round(sum(milvus) / len(milvus), 3) if milvus and _on_deltas(soak_details) else None,
        "kafka_p99_ms_max_window": _dig(soak, "kafka_p99_ms_max_window") if _on_deltas(soak_details) else None,
        "http_p99_ms_max_window": _dig(soak, "http_p99_ms_max_window") if _on_deltas(soak_details) else None,
        "http_p99_ms_idle_at_100": _dig(idle_100, "p99_ms"),
    }
    assert tuple(out) == KEYS
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--threshold", type=float, default=RefreshSettings().delta_threshold)
    args = p.parse_args()
    payload = {name: scale(suffix, items, args.threshold) for name, (suffix, items) in SCALES.items()}
    emit("catalogue_scale", payload, envelope=False)


if __name__ == "__main__":
    main()
