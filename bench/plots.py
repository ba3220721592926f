"""PNG plots from the benchmark results (``bench/results/*.json`` -> ``bench/results/*.png``).

    python -m bench.plots [--results bench/results]

Each plot is drawn only when its results exist, and titled with the machine's core count:
latency vs offered load (Kafka and HTTP), the freshness CDF, the swap-impact timeline, the quality
bars (MIND K=4, K=1, MostPopular) and training samples/s per item-table size. Needs matplotlib.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import RESULTS

Results = dict[str, dict[str, Any]]


def load_results(folder: Path) -> Results:
    """``{benchmark name: payload}`` for every readable ``*.json`` (summary.json included)."""
    out: Results = {}
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(data, dict):
            out[path.stem] = data
    return out


def _cores(results: Results, *names: str) -> str:
    for name in names:
        cores = (results.get(name, {}).get("machine") or {}).get("cores")
        if cores:
            return f"{cores} cores"
    return "? cores"


def _quick(results: Results, *names: str) -> str:
    return " [QUICK smoke run]" if any(results.get(n, {}).get("quick") for n in names) else ""


def plot_latency(results: Results, plt: Any) -> Any:
    """One panel per catalogue size (``recall_latency[_1m]`` with its ``http_latency[_1m]``)."""
    suffixes = sorted(
        {k.removeprefix(n) for n in ("recall_latency", "http_latency") for k in results if k.startswith(n)}
    )
    if not suffixes:
        return None
    fig, axes = plt.subplots(1, len(suffixes), figsize=(7 * len(suffixes), 4.5), squeeze=False)
    names_all: list[str] = []
    for ax, suffix in zip(axes[0], suffixes, strict=True):
        curves = [(n + suffix, lbl) for n, lbl in (("recall_latency", "Kafka"), ("http_latency", "HTTP"))]
        curves = [(n, lbl) for n, lbl in curves if n in results]
        names_all += [n for n, _ in curves]
        for name, label in curves:
            runs = sorted(results[name].get("runs", []), key=lambda r: r["offered_rps"])
            rates = [r["offered_rps"] for r in runs]
            for q, style in (("p50", "-o"), ("p99", "--s")):
                ax.plot(rates, [r["latency_ms"].get(q) for r in runs], style, label=f"{label} {q}")
        ax.set_xlabel("offered load (requests/s)")
        ax.set_ylabel("latency (ms, from scheduled send)")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        items = results[curves[0][0]].get("setup", {}).get("items", "?")
        ax.set_title(f"Recall latency vs offered load ({items} items)")
    fig.suptitle(f"{_cores(results, *names_all)}{_quick(results, *names_all)}")
    return fig


def plot_freshness(results: Results, plt: Any) -> Any:
    """Click -> live CDF of every freshness run (default and tagged), recall CDF of the default run, and
    the default run's user-side and served-model-age CDFs beside it (when it measured them)."""
    runs = {k: r for k, r in sorted(results.items()) if k.startswith("freshness") and r.get("cdf_click_to_live")}
    if not runs:
        return None
    default = runs.get("freshness") or {}
    extra = [(k, t) for k, t in (("cdf_user_side", "user side: click -> in the state recall reads"),
                                 ("cdf_model_age", "age of the served model version")) if default.get(k)]  # fmt: skip
    fig, axes = plt.subplots(1, 1 + len(extra), figsize=(7 + 4.5 * len(extra), 4.5), squeeze=False)
    ax = axes[0][0]
    for (key, title), side in zip(extra, axes[0][1:], strict=True):
        points = default[key]
        side.step([p[0] for p in points], [p[1] for p in points], where="post", marker=".")
        side.set_title(title, fontsize=10)
        side.set_xlabel("seconds")
        side.set_ylim(0, 1.02)
        side.grid(True, alpha=0.3)
    for fr in runs.values():
        s = fr.get("setup", {})
        index = (s.get("index") or {}).get("type", "HNSW")
        label = f"live: {s.get('items', '?')} items, {index}"
        points = fr["cdf_click_to_live"]
        ax.step([p[0] for p in points], [p[1] for p in points], where="post", marker=".", label=label)
    recalled = (runs.get("freshness") or {}).get("cdf_click_to_recalled") or []
    if recalled:
        ax.step([p[0] for p in recalled], [p[1] for p in recalled], where="post", linestyle=":",
                label="in a recall reply (default run)")  # fmt: skip
    goal = (next(iter(runs.values())).get("goal") or {}).get("p99_s")
    if goal:
        ax.axvline(goal, color="red", linestyle=":", label=f"goal p99 {goal:g} s")
    ax.set_xlabel("seconds from a new item's first click")
    ax.set_ylabel("share of new items")
    ax.set_ylim(0, 1.02)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    s = next(iter(runs.values())).get("setup", {})
    ax.set_title(
        f"Freshness CDF: {s.get('click_rate', '?'):g} clicks/s, refresh every {s.get('refresh_interval_s', '?'):g} s"
        f" - {_cores(results, *runs)}{_quick(results, *runs)}",
        fontsize=10,
    )
    return fig


def plot_ingest(results: Results, plt: Any) -> Any:
    """Events/s over each tenth of the run against events stored: does the state store slow down?"""
    runs = [(k, r) for k, r in sorted(results.items()) if k.startswith("ingest_") and r.get("curve")]
    if not runs:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, r in runs:
        curve = r["curve"]
        via = "state path" if r.get("source") == "store" else "via the broker"
        ax.plot([c["applied"] for c in curve], [c["events_per_s"] for c in curve], "-o", label=f"{name} ({via})")
    ax.set_xscale("log")
    ax.set_xlabel("events stored")
    ax.set_ylabel("events/s over the last tenth")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    names = [n for n, _ in runs]
    ax.set_title(f"Ingest throughput, one worker - {_cores(results, *names)}{_quick(results, *names)}")
    return fig


def plot_swap_impact(results: Results, plt: Any) -> Any:
    sw = results.get("swap_impact")
    if not sw or not sw.get("timeline_kafka"):
        return None
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for key, label in (("timeline_kafka", "Kafka"), ("timeline_http", "HTTP")):
        tl = sw.get(key) or []
        if tl:
            ax.plot([p["t_s"] for p in tl], [p["p50_ms"] for p in tl], "-", label=f"{label} p50")
            ax.plot([p["t_s"] for p in tl], [p["p99_ms"] for p in tl], "--", label=f"{label} p99")
            errs = [p["t_s"] for p in tl if p.get("errors")]
            if errs:
                ax.plot(errs, [1] * len(errs), "rx", label=f"{label} errors")
    for i, s in enumerate(sw.get("swaps", [])):
        ax.axvspan(s["asked_t_s"], s["swapped_t_s"] or s["asked_t_s"], color="orange", alpha=0.2,
                   label="refresh round" if i == 0 else None)  # fmt: skip
        if s.get("swapped_t_s") is not None:
            ax.axvline(s["swapped_t_s"], color="green", linestyle=":", label="alias swap" if i == 0 else None)
    ax.set_xlabel("seconds")
    ax.set_ylabel("latency per second of send time (ms)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(
        f"Recall under swaps: {sw.get('errors', '?')} errors, {sw.get('swaps_done', '?')} swaps"
        f" - {_cores(results, 'swap_impact')}{_quick(results, 'swap_impact')}"
    )
    return fig


QUALITY_VARIANTS = (("mind_k4", "MIND K=4"), ("mind_k1", "MIND K=1"), ("most_popular", "MostPopular"))


def plot_quality(results: Results, plt: Any) -> Any:
    q = results.get("quality")
    if not q:
        return None
    datasets = [k for k, v in q.items() if isinstance(v, dict) and "most_popular" in v]
    metrics = ("recall@50", "ndcg@50", "hitrate@50")
    if not datasets:
        return None
    fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4.5), squeeze=False)
    for ax, ds in zip(axes[0], datasets, strict=True):
        variants = [(k, lbl) for k, lbl in QUALITY_VARIANTS if k in q[ds]]
        width = 0.8 / max(len(variants), 1)
        for j, (key, label) in enumerate(variants):
            vals = [q[ds][key].get(m, {}).get("mean", 0.0) for m in metrics]
            ax.bar([i + j * width for i in range(len(metrics))], vals, width, label=label)
        ax.set_xticks([i + width * (len(variants) - 1) / 2 for i in range(len(metrics))], metrics)
        ax.set_title(f"{ds} ({q[ds].get('items', '?')} items)")
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Offline quality, mean over seeds - {_cores(results, 'quality')}{_quick(results, 'quality')}")
    return fig


def plot_train_speed(results: Results, plt: Any) -> Any:
    ts = results.get("train_speed")
    if not ts:
        return None
    tables = [(k, v) for k, v in ts.items() if isinstance(v, dict) and "samples_per_s" in v]
    if not tables:
        return None
    fig, ax = plt.subplots(figsize=(6, 4.5))
    labels = [f"{k}\n{v.get('table_rows', '?')} rows\n{v.get('negatives', '')}" for k, v in tables]
    bars = ax.bar(labels, [v["samples_per_s"] for _, v in tables], color="tab:blue")
    ax.bar_label(bars, fmt="%.0f")
    ax.set_ylabel("training samples/s")
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_title(
        f"Training speed per item-table size - {_cores(results, 'train_speed')}{_quick(results, 'train_speed')}"
    )
    return fig


PLOTS: dict[str, Callable[[Results, Any], Any]] = {
    "latency_vs_load": plot_latency,
    "freshness_cdf": plot_freshness,
    "ingest_curve": plot_ingest,
    "swap_impact": plot_swap_impact,
    "quality": plot_quality,
    "train_speed": plot_train_speed,
}


def render(results: Results, out_dir: Path) -> list[Path]:
    """Write every plot whose data is present; returns the PNG paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fn in PLOTS.items():
        fig = fn(results, plt)
        if fig is None:
            continue
        fig.tight_layout()
        path = out_dir / f"{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--results", type=Path, default=RESULTS, help="folder of the JSON results (PNGs go there too)")
    args = p.parse_args(argv)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        sys.stderr.write("matplotlib is not installed: pip install matplotlib (dev extra)\n")
        return 2
    written = render(load_results(args.results), args.results)
    print(json.dumps({"plots": [str(p) for p in written]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
