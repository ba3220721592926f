"""The operator's trade-off: serving p99 against the served model's age (major-round cadence) and against
new-item freshness (fast-path cadence), one ``bench.serving_under_load`` soak per point.

Each point is a separate process (a fresh stack, nothing shared) at ``bench.serving_under_load``'s rates,
shorter (default 8 minutes in 2-minute windows, the first window a warm-up the curve leaves out):

* the round series: ``--refresh-intervals`` (default 30 60 120 300 s) at the default fast path (1 s);
* the fast-path series: ``--fast-path-intervals`` (default 1 2 5 s) at a round every ``--fixed-refresh``
  (default 120 s, so the rounds disturb the fast-path points less).

Per point: the worst window p99 and the p99 over the load (after the warm-up window) of each path, the
live model's age p99 and the new item's p99. Writes ``bench/results/serving_tradeoff.json`` (``points``:
one row each; ``config``; ``machine``; load averages) and ``serving_tradeoff.png`` (two panels: p99 against
model age p99, p99 against new-item p99), and keeps each point's own results under
``bench/results/tradeoff/``.

    python -m bench.serving_tradeoff                      # 7 points x ~10 min
    python -m bench.serving_tradeoff --refresh-intervals 30 120 --fast-path-intervals 1 5 --duration 300
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from bench.common import RESULTS, machine, write_json

NAME: Final = "serving_tradeoff"
FAST_PATH_ENV: Final = "MINDSTREAM_REFRESH__FAST_PATH_INTERVAL_S"


def point_name(refresh_s: float, fast_path_s: float) -> str:
    return f"{NAME}_r{refresh_s:g}_f{fast_path_s:g}"


def grid(refresh: Sequence[float], fast: Sequence[float], fixed_refresh: float) -> list[tuple[str, float, float]]:
    """(series, refresh interval, fast-path interval) per point, each point once (a point of both series is
    listed under the round series)."""
    points = [("round", r, 1.0) for r in refresh]
    seen = {(r, f) for _, r, f in points}
    points += [("fast_path", fixed_refresh, f) for f in fast if (fixed_refresh, f) not in seen]
    return points


def _largest(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def point_row(series: str, refresh_s: float, fast_s: float, details: dict[str, Any]) -> dict[str, Any]:
    """One point from its ``serving_under_load_details`` (windows after the first: the warm-up)."""
    windows = details.get("series") or []
    steady = windows[1:] if len(windows) > 1 else windows
    goals = details.get("goals") or {}
    return {
        "series": series,
        "refresh_interval_s": refresh_s,
        "fast_path_interval_s": fast_s,
        "kafka_p99_ms_max_window": _largest([w["kafka"].get("p99_ms") for w in steady]),
        "http_p99_ms_max_window": _largest([w["http"].get("p99_ms") for w in steady]),
        "kafka_p99_ms_during_round": (details.get("during_round") or {}).get("kafka_p99_ms_busy"),
        "http_p99_ms_during_round": (details.get("during_round") or {}).get("http_p99_ms_busy"),
        "model_age_p99_s": (goals.get("model_age_p99_s") or {}).get("value"),
        "new_item_p99_s": (goals.get("new_item_p99_s") or {}).get("value"),
        "failed_replies": (goals.get("failed_replies") or {}).get("value"),
        "windows_used": len(steady),
        "load_average": details.get("load_average"),
    }


def run_point(args: argparse.Namespace, refresh_s: float, fast_s: float, folder: Path) -> dict[str, Any]:
    name = point_name(refresh_s, fast_s)
    command = [
        sys.executable,
        "-m",
        "bench.serving_under_load",
        "--duration",
        str(args.duration),
        "--window",
        str(args.window),
        "--refresh-interval",
        str(refresh_s),
        "--env",
        f"{FAST_PATH_ENV}={fast_s:g}",
        "--results",
        str(folder),
        "--out",
        name,
    ]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    details: dict[str, Any] = json.loads((folder / f"{name}_details.json").read_text())
    return details


def plot(points: Sequence[dict[str, Any]], path: Path, fixed_refresh: float) -> None:
    """Left: the points of the round series; right: those at ``fixed_refresh`` (the fast-path series)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    panels = (
        (axes[0], [p for p in points if p["series"] == "round"], "model_age_p99_s", "served model age p99 (s)",
         "refresh_interval_s"),
        (axes[1], [p for p in points if p["refresh_interval_s"] == fixed_refresh], "new_item_p99_s",
         "new item -> recallable p99 (s)", "fast_path_interval_s"),
    )  # fmt: skip
    for ax, chosen, x_key, x_label, knob in panels:
        rows = [p for p in chosen if p[x_key] is not None]
        rows.sort(key=lambda p: p[x_key])
        for path_key, label in (("kafka_p99_ms_max_window", "Kafka"), ("http_p99_ms_max_window", "HTTP")):
            xs = [p[x_key] for p in rows if p[path_key] is not None]
            ys = [p[path_key] for p in rows if p[path_key] is not None]
            ax.plot(xs, ys, marker="o", label=f"{label} p99, worst window")
        for p in rows:
            ax.annotate(f"{p[knob]:g} s", (p[x_key], p["kafka_p99_ms_max_window"] or 0), fontsize=8)
        ax.set_xlabel(x_label)
        ax.set_ylabel("recall p99 (ms)")
        ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_title("major-round cadence (labels: refresh interval)")
    axes[1].set_title("fast-path cadence (labels: fast-path interval)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.serving_tradeoff", description=__doc__.split("\n\n")[0])
    p.add_argument("--refresh-intervals", type=float, nargs="+", default=[30.0, 60.0, 120.0, 300.0])
    p.add_argument("--fast-path-intervals", type=float, nargs="+", default=[1.0, 2.0, 5.0])
    p.add_argument("--fixed-refresh", type=float, default=120.0, help="the round interval of the fast-path series")
    p.add_argument("--duration", type=float, default=480.0, help="seconds of load per point")
    p.add_argument("--window", type=float, default=120.0)
    p.add_argument("--results", type=Path, default=RESULTS)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    folder = args.results / "tradeoff"
    began = time.strftime("%Y-%m-%d %H:%M:%S")
    points = []
    for series, refresh_s, fast_s in grid(args.refresh_intervals, args.fast_path_intervals, args.fixed_refresh):
        load = os.getloadavg()[0]
        details = run_point(args, refresh_s, fast_s, folder)
        row = point_row(series, refresh_s, fast_s, details)
        row["load_average_1m_before"] = round(load, 2)
        points.append(row)
        print(json.dumps(row), flush=True)
    write_json(
        args.results,
        NAME,
        {
            "benchmark": NAME,
            "machine": machine(),
            "began": began,
            "ended": time.strftime("%Y-%m-%d %H:%M:%S"),
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "points": points,
        },
    )
    plot(points, args.results / f"{NAME}.png", args.fixed_refresh)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
