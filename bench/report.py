"""Figures of README.md and docs/*.md, rendered from ``bench/results/*.json``: one command.

    python -m bench.report [--results bench/results] [--check] [--print-only]

Every page block between ``<!-- bench:NAME -->`` and ``<!-- /bench -->`` is rewritten (bench/pages.py
says which results each NAME shows); nothing else in a page changes. ``--check`` writes nothing and
exits 1 when a page differs from what the results render. The ``all`` block (docs/benchmarks.md) is
the full table below: rows carry a reference and a ratio where one exists (goals, K=1 and MostPopular
vs MIND K=4, HTTP vs Kafka latency at the same offered load, exact search vs Milvus, the 368k-row
table vs the ML-100K table in training speed). A figure a result lacks reads "not measured".
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import RESULTS
from bench.plots import load_results

START = "<!-- bench:all -->"
END = "<!-- /bench -->"
RESULTS_PAGE = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"  # the page holding the block

Row = tuple[str, str, str, str, str]  # benchmark, metric, measured, reference / goal, ratio
Results = dict[str, dict[str, Any]]


def _num(x: Any, digits: int = 2) -> str:
    if x is None:
        return "not measured"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        return f"{x:,.{digits}f}" if abs(x) < 1000 else f"{x:,.0f}"
    return str(x)


def _ratio(a: Any, b: Any, digits: int = 2) -> str:
    try:
        return f"{float(a) / float(b):.{digits}f}x" if a is not None and b else "-"
    except (TypeError, ValueError, ZeroDivisionError):
        return "-"


def rows_quality(r: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for ds, sec in r.items():
        if not isinstance(sec, dict) or "mind_k4" not in sec:
            continue
        for metric in ("recall@50", "hitrate@50"):
            k4 = sec["mind_k4"][metric]["mean"]
            rows.append(("quality", f"{ds} MIND K=4 {metric}", _num(k4, 4), "", ""))
            for key, label in (("mind_k1", "MIND K=1"), ("most_popular", "MostPopular")):
                if key in sec:
                    v = sec[key][metric]["mean"]
                    rows.append(("quality", f"{ds} {label} {metric}", _num(v, 4), f"K=4: {_num(k4, 4)}", _ratio(v, k4)))
    return rows


def rows_demo(r: dict[str, Any]) -> list[Row]:
    """``mindstream demo`` output: the same checkpoint evaluated with exact search and with Milvus."""
    ev = r.get("evaluation", r)
    reports = {x.get("backend"): x for x in ev.get("results", []) if str(x.get("name", "")).startswith("mind")}
    exact, milvus = reports.get("exact"), reports.get("milvus")
    rows: list[Row] = []
    if exact and milvus:
        for metric in (k for k in exact if "@" in k):
            rows.append(
                (
                    "exact vs Milvus",
                    f"{r.get('dataset', '')} {metric} with Milvus (HNSW)",
                    _num(milvus.get(metric), 4),
                    f"exact: {_num(exact.get(metric), 4)}",
                    _ratio(milvus.get(metric), exact.get(metric), 3),
                )
            )
    return rows


def rows_train_speed(r: dict[str, Any]) -> list[Row]:
    tables = [(k, v) for k, v in r.items() if isinstance(v, dict) and "samples_per_s" in v]
    rows: list[Row] = []
    first = tables[0][1]["samples_per_s"] if tables else None
    for i, (name, v) in enumerate(tables):
        ref = f"{tables[0][0]}: {_num(first, 0)}" if i else ""
        rows.append(
            ("train_speed", f"{name} ({_num(v.get('table_rows'))} rows) samples/s", _num(v["samples_per_s"], 0), ref,
             _ratio(v["samples_per_s"], first) if i else "")
        )  # fmt: skip
    return rows


def rows_ingest(r: dict[str, Any], name: str = "ingest_throughput") -> list[Row]:
    via = "state path, no broker" if r.get("source") == "store" else "via the embedded broker"
    rows = [
        (name, f"events/s, one worker ({_num(r.get('events'))} events, {via})", _num(r.get("events_per_s")),
         "100,000", _ratio(r.get("events_per_s"), 100_000)),
        (name, "stored == sent", _num(r.get("stored") == r.get("events")), "yes", ""),
    ]  # fmt: skip
    curve = r.get("curve") or []
    if len(curve) >= 2:
        first, last = curve[0], curve[-1]
        rows.append((name, f"events/s, first vs last tenth (at {_num(last.get('applied'))} stored)",
                     f"{_num(first.get('events_per_s'))} -> {_num(last.get('events_per_s'))}", "flat",
                     _ratio(last.get("events_per_s"), first.get("events_per_s"))))  # fmt: skip
    return rows


def rows_ingest_store(r: dict[str, Any]) -> list[Row]:
    return rows_ingest(r, "ingest_store")


def _latency_rows(name: str, r: dict[str, Any], other: dict[str, Any] | None, other_name: str) -> list[Row]:
    rows: list[Row] = []
    items = (r.get("setup") or {}).get("items")
    ref_runs = {run["offered_rps"]: run for run in (other or {}).get("runs", [])}
    for run in r.get("runs", []):
        rate = run["offered_rps"]
        lat = run.get("latency_ms", {})
        ref = ref_runs.get(rate, {}).get("latency_ms", {})
        label = f"{_num(items)} items @ {rate:g} rps: p50 / p99 ms (achieved {_num(run.get('achieved_rps'), 0)} rps)"
        rows.append(
            (
                name,
                label,
                f"{_num(lat.get('p50'))} / {_num(lat.get('p99'))}",
                f"{other_name}: {_num(ref.get('p50'))} / {_num(ref.get('p99'))}" if ref else "",
                _ratio(lat.get("p50"), ref.get("p50")) if ref else "",
            )
        )
        if run.get("errors"):
            rows.append((name, f"@ {rate:g} rps errors", _num(run["errors"]), "0", ""))
    index = (r.get("setup") or {}).get("index")
    if r.get("p99_ms_at_300") is not None:
        rows.append(
            (name, f"p99 ms @ 300 rps ({index})", _num(r["p99_ms_at_300"]), "25" if items == 100_000 else "", "")
        )
    if "capacity_rps" in r:
        goal = "800" if items == 100_000 else ""
        rows.append((name, "capacity rps (all served, p99 < 1 s)", _num(r["capacity_rps"], 0), goal, ""))
    return rows


def rows_freshness(r: dict[str, Any], name: str = "freshness") -> list[Row]:
    s = r.get("setup", {})
    live = r.get("click_to_live_s", {})
    rec = r.get("click_to_recalled_s", {})
    goal = r.get("goal", {})
    index = s.get("index") or {}
    index_text = " ".join(f"{k} {v}" for k, v in index.items() if k != "type")
    index_text = f"{index.get('type', 'HNSW')}{' ' + index_text if index_text else ''}"
    where = (f"{_num(s.get('items'))} items, {index_text}, {_num(s.get('click_rate'), 0)} clicks/s, "
             f"interval {_num(s.get('refresh_interval_s'), 0)} s")  # fmt: skip
    phases = r.get("refresh_phases_s") or {}
    slowest = sorted(((v.get("p50") or 0.0, k) for k, v in phases.items() if k != "publish_total"), reverse=True)[:3]
    return [
        (name, f"click -> live p50 / p90 s ({where})", f"{_num(live.get('p50'))} / {_num(live.get('p90'))}", "",
         ""),
        (name, "click -> live p99 s", _num(live.get("p99")), f"goal <= {_num(goal.get('p99_s'), 0)} s",
         _ratio(live.get("p99"), goal.get("p99_s"))),
        (name, "click -> live max s; never live", f"{_num(live.get('max'))}; {_num(r.get('never_live'))}", "0",
         ""),
        (name, "goal met", _num(goal.get("met")), "yes", ""),
        (name, "click -> in a recall reply p50 / p99 s (coverage)",
         f"{_num(rec.get('p50'))} / {_num(rec.get('p99'))} ({_num(rec.get('coverage'), 3)})", "", ""),
        (name, "user side (click -> in the state recall reads) p50 / p99 s",
         f"{_num(r.get('user_side_p50_s'))} / {_num(r.get('user_side_p99_s'))}", "p99 <= 2 s",
         _ratio(r.get("user_side_p99_s"), 2.0)),
        (name, "served model age p99 s; click -> published version p99 s",
         f"{_num(r.get('model_age_p99_s'))}; {_num(r.get('click_to_version_p99_s'))}",
         f"age <= {_num((r.get('goals') or {}).get('model_age_p99_s'), 0)} s",
         _ratio(r.get("model_age_p99_s"), (r.get("goals") or {}).get("model_age_p99_s"))),
        (name, "mixed-version / failed replies; fast-path generations",
         f"{_num(r.get('mixed_version_replies'))} / {_num(r.get('failed_replies'))}; {_num(r.get('generations'))}",
         "0 / 0", ""),
        (name, "swaps observed; failed rounds",
         f"{_num(r.get('swaps_observed'))}; {_num(r.get('refresh_failed_rounds'))}", "", ""),
        (name, "slowest round phases, p50 s", ", ".join(f"{k} {_num(v)}" for v, k in slowest) or "-", "", ""),
    ]  # fmt: skip


def rows_index_choice(r: dict[str, Any], name: str = "index_choice") -> list[Row]:
    s = r.get("setup", {})
    k = s.get("top_k", 50)
    rows: list[Row] = []
    for run in r.get("runs", []):
        lat = run.get("search_4_queries_ms") or {}
        what = f"{_num(s.get('items'))} items, {run.get('index')}: build + load s; recall@{k}; search p50 ms"
        measured = (f"{_num(run.get('build_and_load_s'))}; {_num(run.get(f'recall@{k}_vs_exact'), 3)}; "
                    f"{_num(lat.get('p50'))}")  # fmt: skip
        rows.append((name, what, measured, "exact: 1.0", ""))
    return rows


def rows_swap(r: dict[str, Any]) -> list[Row]:
    bad = (_num(r.get(k)) for k in ("empty_replies", "inconsistent_replies", "version_regressions"))
    rows: list[Row] = [
        ("swap_impact", "swaps done / asked", f"{_num(r.get('swaps_done'))} / {_num(r.get('swaps_asked'))}", "", ""),
        ("swap_impact", f"errors ({_num(r.get('requests'))} requests)", _num(r.get("errors")), "0", ""),
        ("swap_impact", "empty / inconsistent / version regressions",
         " / ".join(bad),
         "0 / 0 / 0", ""),
    ]  # fmt: skip
    for i, s in enumerate(r.get("swaps", []), 1):
        k = s.get("kafka") or {}
        before, during, after = (k.get(w, {}) for w in ("before", "during", "after"))
        rows.append(
            (
                "swap_impact",
                f"swap {i} Kafka p99 ms during / after",
                f"{_num(during.get('p99_ms'))} / {_num(after.get('p99_ms'))}",
                f"before: {_num(before.get('p99_ms'))}",
                _ratio(during.get("p99_ms"), before.get("p99_ms")),
            )
        )
    return rows


def rows_memory(r: dict[str, Any]) -> list[Row]:
    peaks = r.get("peak_rss_mb", {})
    rows: list[Row] = [("memory", f"peak RSS MB {name}", _num(mb, 0), "", "") for name, mb in peaks.items()]
    rows.append(("memory", "peak RSS MB, sum of processes", _num(r.get("peak_rss_total_mb"), 0), "", ""))
    return rows


def rows_vocabulary(r: dict[str, Any]) -> list[Row]:
    dense, sparse = r.get("dense") or {}, r.get("sparse") or {}
    where = f"{_num(r.get('events'))} clicks, {_num(dense.get('distinct_items'))} items"
    return [
        ("vocabulary", f"table rows dense / sparse ids ({where})",
         f"{_num(dense.get('table_rows'))} / {_num(sparse.get('table_rows'))}", "items + 1", ""),
        ("vocabulary", "refresh peak RSS MB dense / sparse",
         f"{_num(dense.get('refresh_peak_rss_mb'), 0)} / {_num(sparse.get('refresh_peak_rss_mb'), 0)}", "<= 1.10x",
         _ratio(sparse.get("refresh_peak_rss_mb"), dense.get("refresh_peak_rss_mb"), 3)),
        ("vocabulary", "round s dense / sparse (median)",
         f"{_num(dense.get('round_s'))} / {_num(sparse.get('round_s'))}", "<= 1.20x",
         _ratio(sparse.get("round_s"), dense.get("round_s"), 3)),
    ]  # fmt: skip


def rows_soak(r: dict[str, Any]) -> list[Row]:
    cfg = r.get("config") or {}
    where = (
        f"{_num(r.get('duration_s', 0) / 60, 0)} min, {_num(cfg.get('click_rate'), 0)} clicks/s, "
        f"{_num(cfg.get('kafka_rate'), 0)} Kafka + {_num(cfg.get('http_rate'), 0)} HTTP req/s"
    )
    return [
        ("soak", f"Kafka p99 ms first -> last window ({where})",
         f"{_num(r.get('kafka_p99_ms_first'))} -> {_num(r.get('kafka_p99_ms_last'))}", "<= 1.2x",
         _ratio(r.get("kafka_p99_ms_last"), r.get("kafka_p99_ms_first"))),
        ("soak", "HTTP p99 ms first -> last window",
         f"{_num(r.get('http_p99_ms_first'))} -> {_num(r.get('http_p99_ms_last'))}", "<= 1.2x",
         _ratio(r.get("http_p99_ms_last"), r.get("http_p99_ms_first"))),
        ("soak", "failed replies / lost clicks", f"{_num(r.get('failed_replies'))} / {_num(r.get('lost_clicks'))}",
         "0 / 0", ""),
        ("soak", "largest RSS growth last / first window", _num(r.get("rss_growth_ratio_max")), "<= 1.5x", ""),
    ]  # fmt: skip


def rows_days(r: dict[str, Any]) -> list[Row]:
    where = f"{_num(r.get('duration_s', 0) / 3600, 1)} h, {_num(r.get('clicks_sent'))} clicks"
    disk = r.get("disk_mb_last") or {}
    return [
        ("days", f"largest RSS growth (window peaks), last / 30-min window ({where})",
         _num(r.get("rss_growth_ratio_after_warmup"), 3), "<= 1.2x", ""),
        ("days", "state disk growth, last / 30-min window", _num(r.get("disk_growth_ratio_after_warmup"), 3), "<= 1.2x",
         ""),
        ("days", "lost clicks / failed replies", f"{_num(r.get('lost_clicks'))} / {_num(r.get('failed_replies'))}",
         "0 / 0", ""),
        ("days", "ingest state bytes per user / disk MB at the end",
         f"{_num(r.get('state_bytes_per_user'), 0)} / {_num(disk.get('total'), 0)}", "", ""),
    ]  # fmt: skip


def _mean(table: dict[str, Any], key: str, metric: str) -> float | None:
    value = (table.get(key) or {}).get(metric) or {}
    mean = value.get("mean") if isinstance(value, dict) else None
    return float(mean) if isinstance(mean, int | float) else None


def rows_multi_interest(r: dict[str, Any], name: str = "multi_interest") -> list[Row]:
    std, mixed = r.get("standard") or {}, r.get("mixed") or {}
    k1_rec, k1_cov = _mean(std, "k1", "recall@50"), _mean(std, "k1", "coverage@50")
    best: tuple[str, float, float] | None = None  # (config, coverage ratio, recall ratio) at <= 5% recall cost
    for key in std:
        rec, cov = _mean(std, key, "recall@50"), _mean(std, key, "coverage@50")
        if key.startswith("k1") or rec is None or cov is None or not k1_rec or not k1_cov:
            continue
        if rec / k1_rec >= 0.95 and (best is None or cov / k1_cov > best[1]):
            best = (key, cov / k1_cov, rec / k1_rec)
    cost = r.get("serving_cost_ms") or {}
    return [
        (name, "mixed tastes Recall@50, K=4 vs K=1",
         f"{_num(_mean(mixed, 'k4', 'recall@50'), 4)} vs {_num(_mean(mixed, 'k1', 'recall@50'), 4)}", ">= 1.10x",
         _ratio(_mean(mixed, "k4", "recall@50"), _mean(mixed, "k1", "recall@50"), 3)),
        (name, "standard: best K>=2 coverage@50 vs K=1 at <= 5% Recall cost",
         f"{best[0]}: recall {best[2]:.3f}x" if best else "none within 5%", ">= 1.3x",
         f"{best[1]:.3f}x" if best else "-"),
        (name, "engine ms per request, lambda 0 -> 0.5 (K=4, top_k 50)",
         f"{_num(cost.get('lambda_0'), 3)} -> {_num(cost.get('lambda_0.5'), 3)}", "<= +1 ms", ""),
    ]  # fmt: skip


def rows_serving_under_load(r: dict[str, Any]) -> list[Row]:
    where = f"{_num(r.get('soak_minutes'), 0)}-min soak"
    return [
        ("serving_under_load", f"Kafka / HTTP p99 ms, worst window ({where})",
         f"{_num(r.get('kafka_p99_ms_max_window'))} / {_num(r.get('http_p99_ms_max_window'))}", "<= 50 / 30", ""),
        ("serving_under_load", "Kafka / HTTP p99 ms during a round or swap",
         f"{_num(r.get('kafka_p99_ms_during_round'))} / {_num(r.get('http_p99_ms_during_round'))}",
         f"stage: {r.get('p99_stage_during_round') or '-'}", ""),
        ("serving_under_load", "model age / new item p99 s",
         f"{_num(r.get('model_age_p99_s'), 1)} / {_num(r.get('new_item_p99_s'), 1)}", "<= 60 / 5", ""),
        ("serving_under_load", "idle HTTP p99 ms at 300 req/s / capacity req/s",
         f"{_num(r.get('http_p99_ms_at_300_idle'))} / {_num(r.get('http_capacity_rps_idle'), 0)}", "<= 25 / >= 800",
         ""),
    ]  # fmt: skip


def rows_catalogue_scale(r: dict[str, Any]) -> list[Row]:
    """Delta publication per catalogue size (``bench.catalogue_scale``, from the delta runs)."""
    rows: list[Row] = []
    for s in r.values():
        if not isinstance(s, dict):
            continue
        where = f"{_num(s.get('items'))} items"
        rows += [
            ("catalogue_scale", f"rows written per delta round, p50 share ({where})",
             _num(s.get("rows_written_share_p50"), 3), "<= 0.10 at 1M", ""),
            ("catalogue_scale", f"Recall@50 served vs publishing everything ({where})",
             f"{_num(s.get('served_recall_at_50'), 4)} vs {_num(s.get('full_publish_recall_at_50'), 4)}", "",
             _ratio(s.get("served_recall_at_50"), s.get("full_publish_recall_at_50"), 3)),
            ("catalogue_scale", f"round p50 s; model age / new item p99 s ({where})",
             f"{_num(s.get('round_s_p50'))}; {_num(s.get('model_age_p99_s'), 1)} / {_num(s.get('new_item_p99_s'), 1)}",
             "age <= 60, new item <= 5", ""),
        ]  # fmt: skip
    return rows


def rows_cold_start(r: dict[str, Any]) -> list[Row]:
    """Served (fast-path) minus rebuilt Recall@50 and the best steps rule minus co-click, per scenario."""
    rows: list[Row] = []
    for scenario, s in (r.get("summary") or {}).items():
        if not isinstance(s, dict):
            continue
        served = s.get("served_minus_rebuild_recall50")
        steps = s.get("best_steps_minus_co_click_recall50")
        rows.append(("cold_start", f"{scenario} new items: served - rebuild Recall@50; best steps - co-click",
                     f"{_num(_mean_of(served), 4)}; {_num(_mean_of(steps), 4)}", "", ""))  # fmt: skip
    return rows


def _mean_of(value: Any) -> Any:
    return value.get("mean") if isinstance(value, dict) else value


def rows_serving_tradeoff(r: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for point in r.get("points", []):
        where = (f"rounds every {_num(point.get('refresh_interval_s'), 0)} s, "
                 f"fast path every {_num(point.get('fast_path_interval_s'), 0)} s")  # fmt: skip
        p99 = f"{_num(point.get('kafka_p99_ms_max_window'))} / {_num(point.get('http_p99_ms_max_window'))}"
        fresh = f"{_num(point.get('model_age_p99_s'), 1)} / {_num(point.get('new_item_p99_s'), 1)}"
        rows.append(("serving_tradeoff", f"Kafka / HTTP p99 ms worst window; model age / new item p99 s ({where})",
                     f"{p99}; {fresh}", "", ""))  # fmt: skip
    return rows


def rows_broker(r: dict[str, Any]) -> list[Row]:
    return [
        ("broker", f"{r.get('broker', 'broker')}: start s / RSS MB",
         f"{_num(r.get('start_s'))} / {_num(r.get('broker_rss_mb'), 0)}", "", ""),
        ("broker", "broker CPU cores at up's defaults", _num(r.get("broker_cpu_cores_up_default"), 3), "", ""),
        ("broker", "ingest events/s through it", _num(r.get("ingest_events_per_s")), "", ""),
        ("broker", "Kafka recall p50 / p99 ms at 200 req/s",
         f"{_num(r.get('kafka_p50_ms_at_200'))} / {_num(r.get('kafka_p99_ms_at_200'))}", "", ""),
        ("broker", f"{_num(r.get('soak_minutes'), 0)}-min soak: Kafka p99 ms worst window; failed / lost",
         f"{_num(r.get('soak_kafka_p99_ms_max_window'))}; {_num(r.get('soak_failed_replies'))} / "
         f"{_num(r.get('soak_lost_clicks'))}", "0 / 0", ""),
    ]  # fmt: skip


def rows_history_read(r: dict[str, Any]) -> list[Row]:
    new, old = r.get("schema4_covering") or {}, r.get("schema3_user_ts") or {}
    where = f"{_num(r.get('rows'))} rows, {_num(r.get('users'))} users"
    return [
        ("history_read", f"a round's read of every history, s: covering index vs (user, ts) ({where})",
         f"{_num(new.get('refresh_read_s'), 3)} vs {_num(old.get('refresh_read_s'), 3)}", "",
         _ratio(old.get("refresh_read_s"), new.get("refresh_read_s"))),
        ("history_read", "a recall's user_ids read p99 ms: covering vs (user, ts)",
         f"{_num(new.get('recall_history_p99_ms'), 4)} vs {_num(old.get('recall_history_p99_ms'), 4)}", "",
         _ratio(old.get("recall_history_p99_ms"), new.get("recall_history_p99_ms"))),
        ("history_read", "state file MB: covering vs (user, ts)",
         f"{_num(new.get('file_mb'), 1)} vs {_num(old.get('file_mb'), 1)}", "",
         _ratio(new.get("file_mb"), old.get("file_mb"), 3)),
    ]  # fmt: skip


def rows_summary(r: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for step in r.get("steps", []):
        if step.get("status") != "ok":
            rows.append(("run_all", f"{step.get('name')} FAILED", str(step.get("status")), "ok", ""))
    return rows


def render(results: Results, plots_dir: Path = RESULTS) -> str:
    """The Markdown block (without the markers)."""
    sections: list[tuple[str, Callable[[dict[str, Any]], list[Row]]]] = [
        ("quality", rows_quality),
        ("demo", rows_demo),
        ("train_speed", rows_train_speed),
        ("ingest_throughput", rows_ingest),
        ("ingest_store", rows_ingest_store),
        ("freshness", rows_freshness),
        ("vocabulary", rows_vocabulary),
        ("swap_impact", rows_swap),
        ("memory", rows_memory),
        ("soak", rows_soak),
        ("days", rows_days),
        ("serving_under_load", rows_serving_under_load),
        ("serving_tradeoff", rows_serving_tradeoff),
        ("broker", rows_broker),
        ("catalogue_scale", rows_catalogue_scale),
        ("cold_start", rows_cold_start),
        ("history_read", rows_history_read),
        ("multi_interest", rows_multi_interest),
        ("multi_interest_amazonbook", functools.partial(rows_multi_interest, name="multi_interest_amazonbook")),
        ("summary", rows_summary),
    ]
    rows: list[Row] = []
    for name, fn in sections[:5]:
        rows += _safe(name, fn, results)
    for name, other, label in (("recall_latency", "http_latency", "HTTP"), ("http_latency", "recall_latency", "Kafka")):
        for key in sorted(k for k in results if k.startswith(name)):
            rows += _safe_latency(key, results, results.get(key.replace(name, other)), label)
    for name, fn in sections[5:]:
        rows += _safe(name, fn, results)
        if name == "freshness":  # tagged runs: freshness_flat, freshness_1m_ivf, ...
            for key in sorted(k for k in results if k.startswith("freshness_")):
                rows += _safe(key, functools.partial(rows_freshness, name=key), results)
    for key in sorted(k for k in results if k.startswith("index_choice")):
        rows += _safe(key, functools.partial(rows_index_choice, name=key), results)
    machines = {
        f"{m.get('cores')} cores, Python {m.get('python')}, {m.get('date')}"
        for r in results.values()
        if isinstance(m := r.get("machine"), dict)
    }
    quick = sorted(k for k, r in results.items() if r.get("quick") and k != "summary")
    from bench.pages import measured_on

    shown = sorted({row[0] for row in rows if row[0] in results})
    lines = [
        f"Measured on: {'; '.join(sorted(machines)) or 'unknown machine'}."
        + (f" **Quick smoke runs (not representative): {', '.join(quick)}.**" if quick else ""),
        "",
        "When: " + "; ".join(f"{key} {measured_on(results, key)}" for key in shown) + ".",
        "",
        "| benchmark | metric | measured | reference / goal | ratio |",
        "|---|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows]
    plots = sorted(p.name for p in plots_dir.glob("*.png")) if plots_dir.exists() else []
    if plots:
        where = Path(os.path.relpath(plots_dir.resolve(), RESULTS_PAGE.parent)).as_posix()
        lines += ["", "Plots: " + ", ".join(f"[{p}]({where}/{p})" for p in plots)]
    return "\n".join(lines) + "\n"


def _safe(name: str, fn: Callable[[dict[str, Any]], list[Row]], results: Results) -> list[Row]:
    if name not in results:
        return [] if name == "summary" else [(name, "every figure", "not measured", "", "")]
    try:
        return fn(results[name])
    except Exception as exc:  # a malformed result must not hide the others
        return [(name, "could not render", type(exc).__name__, "", "")]


def _safe_latency(key: str, results: Results, peer: dict[str, Any] | None, label: str) -> list[Row]:
    try:
        return _latency_rows(key, results[key], peer, label)
    except Exception as exc:
        return [(key, "could not render", type(exc).__name__, "", "")]


def write_readme(readme: Path, block: str) -> bool:
    """Replace what is between the markers; False (file untouched) when they are absent."""
    text = readme.read_text() if readme.exists() else ""
    start = text.find(START)
    end = text.find(END, start) if start >= 0 else -1
    if start < 0 or end < 0:
        return False
    readme.write_text(text[: start + len(START)] + "\n" + block + text[end:])
    return True


def main(argv: list[str] | None = None) -> int:
    from bench import pages

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--root", type=Path, default=pages.ROOT, help="checkout whose README.md and docs/ are rendered")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 when a page is out of date")
    p.add_argument("--print-only", action="store_true", help="print the full results table, write nothing")
    args = p.parse_args(argv)
    results = load_results(args.results)
    if args.print_only:
        sys.stdout.write(render(results, args.results))
        return 0
    if args.check:
        stale = [pg for pg in pages.pages(args.root) if pages.render_page(pg.read_text(), results) != pg.read_text()]
        for page in stale:
            sys.stdout.write(f"out of date: {page} (run python -m bench.report)\n")
        return 1 if stale else 0
    for page in pages.write_pages(results, args.root):
        sys.stdout.write(f"rendered {page}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
