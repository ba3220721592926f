"""The README's headline figures: one line per benchmark, each read from its result file.

Rendered into README.md's ``<!-- bench:headline -->`` block by ``python -m bench.report``; the full
tables are in docs/benchmarks.md and on the page of each subject.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench.report import Results, _num

Figure = Callable[[Results], str]


def _get(d: Any, *path: str) -> Any:
    for key in path:
        d = d.get(key) if isinstance(d, dict) else None
    return d


def _pm(d: Any, digits: int = 3) -> str:
    mean, sd = _get(d, "mean"), _get(d, "sd")
    return _num(mean, digits) + (f" ± {_num(sd, digits)}" if sd is not None else "")


def quality(r: Results) -> str:
    ml = _get(r["quality"], "ml-100k")
    return (
        f"ML-100K Recall@50: MIND K=1 {_pm(_get(ml, 'mind_k1', 'recall@50'))}, "
        f"K=4 {_pm(_get(ml, 'mind_k4', 'recall@50'))}, MostPopular {_pm(_get(ml, 'most_popular', 'recall@50'))}"
    )


def demo(r: Results) -> str:
    d = r["demo"]
    found = {
        x.get("backend"): x for x in _get(d, "evaluation", "results") or [] if str(x.get("name", "")).startswith("mind")
    }
    return (
        f"{d.get('dataset', '')} Recall@50 exact {_num(_get(found, 'exact', 'recall@50'), 4)}, "
        f"Milvus {_num(_get(found, 'milvus', 'recall@50'), 4)}"
    )


def train_speed(r: Results) -> str:
    tables = [(k, v) for k, v in r["train_speed"].items() if isinstance(v, dict) and "samples_per_s" in v]
    return "; ".join(
        f"{k} ({_num(v.get('table_rows'))} rows) {_num(v['samples_per_s'], 0)} samples/s" for k, v in tables
    )


def ingest(r: Results) -> str:
    d = r["ingest_throughput"]
    return f"{_num(d.get('events_per_s'), 0)} events/s, one worker, {_num(d.get('events'))} events (goal 100,000)"


def _latency(key: str) -> Figure:
    def figure(r: Results) -> str:
        d = r[key]
        runs = [
            f"{_num(_get(x, 'latency_ms', 'p50'))} / {_num(_get(x, 'latency_ms', 'p99'))} ms "
            f"at {x.get('offered_rps'):g}"
            for x in d.get("runs", [])
        ]
        items = _num(_get(d, "setup", "items"))
        capacity = f"; capacity {_num(d['capacity_rps'], 0)} req/s" if "capacity_rps" in d else ""
        return f"{items} items, p50 / p99: " + ", ".join(runs) + capacity

    return figure


def broker(r: Results) -> str:
    d = r["broker"]
    return (
        f"{d.get('broker')}: starts in {_num(d.get('start_s'))} s, {_num(d.get('broker_rss_mb'), 0)} MB, "
        f"{_num(d.get('broker_cpu_cores_up_default'), 3)} cores at up's defaults; {_num(d.get('soak_minutes'), 0)}-min "
        f"soak: {_num(d.get('soak_lost_clicks'))} lost clicks, {_num(d.get('soak_failed_replies'))} failed replies"
    )


def _freshness(key: str) -> Figure:
    def figure(r: Results) -> str:
        d = r[key]
        items = _num(_get(d, "setup", "items"))
        return (
            f"{items} items, {_num(_get(d, 'setup', 'click_rate'), 0)} clicks/s: "
            f"new item p50 / p99 {_num(d.get('new_item_p50_s'), 1)} / {_num(d.get('new_item_p99_s'), 1)} s, "
            f"user side p99 {_num(d.get('user_side_p99_s'), 1)} s, model age p99 {_num(d.get('model_age_p99_s'), 0)} s "
            f"(goals 5 / 2 / 60 s)"
        )

    return figure


def catalogue_scale(r: Results) -> str:
    parts = []
    for s in r["catalogue_scale"].values():
        if isinstance(s, dict):
            parts.append(
                f"{_num(s.get('items'))} items: {_num(s.get('rows_written_share_p50'), 3)} of rows written per round, "
                f"Recall@50 {_num(s.get('served_recall_at_50'), 3)} vs {_num(s.get('full_publish_recall_at_50'), 3)}"
            )
    return "; ".join(parts) + " (goal <= 0.10 written at 1M)"


def serving(r: Results) -> str:
    d = r["serving_under_load"]
    return (
        f"{_num(d.get('soak_minutes'), 0)} min: p99 worst 5-min window {_num(d.get('kafka_p99_ms_max_window'), 0)} ms "
        f"Kafka / {_num(d.get('http_p99_ms_max_window'), 0)} ms HTTP (goals 50 / 30); model age p99 "
        f"{_num(d.get('model_age_p99_s'), 0)} s, new item p99 {_num(d.get('new_item_p99_s'), 1)} s"
    )


def swap_impact(r: Results) -> str:
    d = r["swap_impact"]
    return (
        f"{_num(d.get('swaps_done'))} of {_num(d.get('swaps_asked'))} swaps; {_num(d.get('errors'))} errors, "
        f"{_num(d.get('empty_replies'))} empty, {_num(d.get('inconsistent_replies'))} mixed-version replies"
    )


def soak(r: Results) -> str:
    d = r["soak"]
    return f"{_num(d.get('lost_clicks'))} lost clicks, {_num(d.get('failed_replies'))} failed replies"


def days(r: Results) -> str:
    d = r["days"]
    return (
        f"{_num(d.get('duration_s', 0) / 3600, 1)} h, {_num(d.get('clicks_sent'))} clicks: "
        f"{_num(d.get('lost_clicks'))} lost, {_num(d.get('failed_replies'))} failed replies; "
        f"RSS {_num(d.get('rss_growth_ratio_after_warmup'), 3)}x and disk "
        f"{_num(d.get('disk_growth_ratio_after_warmup'), 3)}x of the 30-min window (goal 1.2x)"
    )


def multi_interest(r: Results) -> str:
    def rec(name: str, k: str) -> str:
        return _num(_get(r.get(name), "standard", k, "recall@50", "mean"), 3)

    return (
        f"Recall@50 K=1 / K=4: ML-100K {rec('multi_interest', 'k1')} / {rec('multi_interest', 'k4')}, "
        f"AmazonBook slice {rec('multi_interest_amazonbook', 'k1')} / {rec('multi_interest_amazonbook', 'k4')}"
    )


def history_read(r: Results) -> str:
    d = r["history_read"]
    return (
        f"covering index: a round's read {_num(d.get('refresh_read_speedup'), 1)}x faster, a recall's history read "
        f"{_num(d.get('recall_history_p99_speedup'), 1)}x at p99, file {_num(d.get('file_growth'), 3)}x"
    )


def memory(r: Results) -> str:
    return f"peak RSS of all processes {_num(r['memory'].get('peak_rss_total_mb'), 0)} MB"


def product_recall(r: Results) -> str:
    d = r["product_recall"]
    ratios = ", ".join(
        f"{kind} {_num(_get(v, 'ratio_p99_to_plain'), 2)}x"
        for kind, v in (d.get("latency") or {}).items()
        if not str(kind).startswith("plain")
    )
    return (
        f"withdrawal p50 / p99 {_num(d.get('withdrawal_p50_s'), 2)} / {_num(d.get('withdrawal_p99_s'), 2)} s (goal 5); "
        f"p99 against plain recall: {ratios} (goal 1.2x)"
    )


def pymilvus_paths(r: Results) -> str:
    d = r["pymilvus_paths"]
    return (
        f"{_num(d.get('items'))} rows written in {_num(_get(d, 'write_s', 'raw'), 2)} s raw vs "
        f"{_num(_get(d, 'write_s', 'public'), 2)} s public; a search of {_num(d.get('search_queries'))} queries "
        f"{_num(_get(d, 'search_cpu_ms_mean', 'raw'), 1)} vs {_num(_get(d, 'search_cpu_ms_mean', 'public'), 1)} ms "
        f"of client CPU"
    )


# (what, result file, figure, command)
HEADLINE: list[tuple[str, str, Figure, str]] = [
    ("quality (5 seeds)", "quality", quality,
     "`python -m bench.ablation`, then `python -m bench.quality --from-ablation`"),
    ("exact vs Milvus search", "demo", demo, "`mindstream demo`"),
    ("training speed", "train_speed", train_speed, "`python -m bench.train_speed`"),
    ("ingest through the embedded broker", "ingest_throughput", ingest, "`python -m bench.ingest_throughput`"),
    ("recall over HTTP", "http_latency", _latency("http_latency"), "`python -m bench.http_latency`"),
    ("recall over Kafka", "recall_latency", _latency("recall_latency"), "`python -m bench.recall_latency`"),
    ("the embedded Apache Kafka broker", "broker", broker, "`python -m bench.broker`"),
    ("freshness", "freshness", _freshness("freshness"), "`python -m bench.freshness`"),
    ("freshness on deltas", "freshness_delta", _freshness("freshness_delta"),
     "`python -m bench.freshness --tag delta`"),
    ("freshness on deltas, 1M items", "freshness_delta_1m", _freshness("freshness_delta_1m"),
     "`python -m bench.freshness --items 1000000 --tag delta_1m`"),
    ("withdrawal, filters, exclude_seen", "product_recall", product_recall, "`python -m bench.product_recall`"),
    ("pymilvus internals kept", "pymilvus_paths", pymilvus_paths, "`python -m bench.pymilvus_paths`"),
    ("delta publication, offline", "catalogue_scale", catalogue_scale,
     "`python -m bench.delta_publication`, then `python -m bench.catalogue_scale`"),
    ("serving while the model learns", "serving_under_load", serving, "`python -m bench.serving_under_load`"),
    ("swaps under load", "swap_impact", swap_impact, "`python -m bench.swap_impact`"),
    ("soak", "soak", soak, "`python -m bench.soak`"),
    ("memory of the stack", "memory", memory, "`python -m bench.memory`"),
    ("compressed days", "days", days, "`python -m bench.days`"),
    ("several interests", "multi_interest", multi_interest, "`python -m bench.multi_interest`"),
    ("history reads from the state", "history_read", history_read, "`python -m bench.history_read`"),
]  # fmt: skip
