"""Where multi-interest pays: K in {1, 2, 4} x diversity lambda in {0, 0.1, 0.5} x protocol in
{standard, mixed tastes}, several seeds, with accuracy (Recall, NDCG, HitRate @50) and what the lists
cover (category coverage, intra-list diversity, novelty @50); plus MIND's dynamic interest count
(``k4_dyn``), MostPopular, and the per-request cost of the diversity step in the recall engine.

    python -m bench.multi_interest [--datasets ml-100k amazonbook-demo] [--seeds 2026 7 1 2 3]
        [--batches 3000] [--jobs 2] [--rounds 4]

Budget and protocol follow ``bench.quality`` / ``bench.ablation``: 3,000 batches of 128, best
checkpoint by validation Recall@50 (every 500 batches), metrics over valid + test users (one mean
over both, i.e. user-weighted), mean +- sd over seeds. The mixed-tastes protocol pairs the same
users (``rounds`` seeded pairings, :mod:`model.data.mixed`). Coverage needs categories (ML-100K's
genres; the AmazonBook slice has none: null); intra-list diversity is by categories where known, by
item vectors otherwise: for a data set without categories, the item vectors of the seed's K=1 model
are the common reference for every configuration, while the greedy merge itself uses the evaluated
model's own vectors, as serving does. Novelty: mean popularity rank (1 = most clicked).

Writes ``bench/results/multi_interest.json`` (ML-100K) and ``multi_interest_<dataset>.json`` for the
others, each with exactly ``seeds``, ``standard``, ``mixed``, ``serving_cost_ms``; everything else
(per-seed values, interest diagnostics, MostPopular, k4_dyn, goals, machine, load) goes to
``<same name>_details.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import RESULTS, machine, peak_rss_mb, run_in_processes
from bench.quality import DEFAULT_SEEDS
from model.checkpoint import open_checkpoint
from model.config import MindConfig, TrainConfig
from model.data.mixed import mixed_tastes
from model.data.types import Dataset, HeldOut
from model.diversity import ItemContext
from model.evaluate import evaluate_model, evaluate_most_popular
from model.export import UserTower, item_table
from model.search import ExactSearcher
from model.train import Trainer, configure_threads, train
from workers.settings import DataSettings

TOP_N = 50
KS = (1, 2, 4)
LAMBDAS = (0.0, 0.1, 0.5)
METRICS = ("recall", "ndcg", "hitrate", "coverage", "diversity", "novelty")
# Models trained per seed: the served defaults with k_max = K; k4_dyn adds MIND's dynamic interest count.
MODELS: dict[str, dict[str, Any]] = {f"k{k}": {"k_max": k} for k in KS} | {"k4_dyn": {"k_max": 4, "dynamic_k": True}}
Task = tuple[str, int, int, int, int, bool]  # dataset, seed, batches, threads, rounds, keep the K=4 tower


def config_key(model: str, lam: float) -> str:
    return model if lam == 0 else f"{model}_l{lam:g}"


def _both(ds: Dataset) -> HeldOut:
    """Valid + test users as one held-out set (one mean over both = the user-weighted mean)."""
    v, t = ds.valid, ds.test
    times = v.times + t.times if v.times is not None and t.times is not None else None
    return HeldOut(
        np.concatenate([v.user_ids, t.user_ids]),
        v.histories + t.histories,
        v.truths + t.truths,
        v.truth_protocol,
        times,
    )


def _row(report: dict[str, Any]) -> dict[str, Any]:
    keep = [f"{m}@{TOP_N}" for m in METRICS] + ["users", "diversity_basis", "interests"]
    return {k: report[k] for k in keep if k in report}


def run_seed(task: Task) -> tuple[str, dict[str, Any]]:
    """Train every model of one (dataset, seed) and evaluate it on both protocols at every lambda."""
    dataset, seed, batches, threads, rounds, keep_tower = task
    configure_threads(threads)
    began = time.perf_counter()
    ds = DataSettings(split_seed=seed).load(dataset)
    heldout = _both(ds)
    protocols = {"standard": heldout, "mixed": mixed_tastes(heldout, seed=seed, rounds=rounds)}
    popularity = ds.train.popularity()
    base = ItemContext(popularity, catalogue=ds.items, vocab=ds.vocab)
    out: dict[str, Any] = {"seed": seed, "users": {p: h.num_users for p, h in protocols.items()}, "models": {}}
    reference: np.ndarray | None = None  # item vectors for the diversity metric where there are no categories
    fields: dict[str, Any] = {"batches": batches, "eval_every": max(batches // 6, 1), "seed": seed}
    for model, mind_over in MODELS.items():
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            trainer = Trainer(ds.train, MindConfig(**mind_over), TrainConfig(**fields), item_count=ds.item_count)
            result = train(trainer, batches=batches, checkpoint_dir=Path(tmp), valid=ds.valid, top_n=TOP_N)
            best = open_checkpoint(Path(tmp), "best")
            net = best.load_net()
        table = item_table(net)
        if reference is None:
            reference = table  # the K=1 model (trained first)
        metric_ctx = base if ds.items is not None else base.with_vectors(reference)
        merge_ctx = base.with_vectors(table)
        tower, searcher = UserTower(net, best.manifest.version), ExactSearcher(table)
        evals: dict[str, Any] = {}
        for protocol, held in protocols.items():
            for lam in LAMBDAS:
                report = evaluate_model(
                    tower, searcher, held, top_n=TOP_N, context=metric_ctx, diversity=lam, merge_context=merge_ctx
                )
                evals.setdefault(protocol, {})[config_key(model, lam)] = _row(report.as_dict())
        out["models"][model] = {
            "evals": evals,
            "best_step": best.manifest.step,
            "train_seconds": round(result.train_seconds, 1),
            "wall_seconds": round(time.perf_counter() - t0, 1),
        }
        if keep_tower and model == "k4":
            caps = net.capsules
            out["k4_tower"] = {
                "table": table,
                "bilinear": caps.bilinear.numpy(),
                "routing_logits": caps.routing_logits.numpy(),
                "iters": caps.iters,
            }
    ref_ctx = base if ds.items is not None else base.with_vectors(reference)
    out["most_popular"] = {
        p: _row(evaluate_most_popular(popularity, h, top_n=TOP_N, context=ref_ctx).as_dict())
        for p, h in protocols.items()
    }
    out["wall_seconds"] = round(time.perf_counter() - began, 1)
    return dataset, out


def _stat(values: Sequence[float | None]) -> dict[str, float | None]:
    real = [float(v) for v in values if v is not None]
    if not real:
        return {"mean": None, "sd": None}
    sd = float(np.std(real, ddof=1)) if len(real) > 1 else 0.0
    return {"mean": round(float(np.mean(real)), 4), "sd": round(sd, 4)}


def _interests(rows: list[dict[str, Any]]) -> dict[str, Any]:
    diags = [r["interests"] for r in rows if "interests" in r]
    if not diags:
        return {}
    cos = [d["mean_pairwise_cosine"] for d in diags if d["mean_pairwise_cosine"] is not None]
    return {
        "mean_pairwise_cosine": round(float(np.mean(cos)), 4) if cos else None,
        "hit_share": [round(float(x), 4) for x in np.mean([d["hit_share"] for d in diags], axis=0)],
        "distinct_candidates": round(float(np.mean([d["distinct_candidates"] for d in diags])), 1),
    }


def summarise(runs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The table (configurations of the K x lambda grid, each metric {mean, sd}) and the details."""
    runs = sorted(runs, key=lambda r: r["seed"])
    table: dict[str, Any] = {"standard": {}, "mixed": {}}
    details: dict[str, Any] = {"standard": {}, "mixed": {}}
    for protocol in ("standard", "mixed"):
        for model in MODELS:
            for lam in LAMBDAS:
                key = config_key(model, lam)
                rows = [r["models"][model]["evals"][protocol][key] for r in runs]
                stats = {f"{m}@{TOP_N}": _stat([row.get(f"{m}@{TOP_N}") for row in rows]) for m in METRICS}
                entry = {
                    **stats,
                    "per_seed": {m: [row.get(m) for row in rows] for m in stats},
                    "interests": _interests(rows),
                }
                if model in {f"k{k}" for k in KS}:
                    table[protocol][key] = stats
                details[protocol][key] = entry
        rows = [r["most_popular"][protocol] for r in runs]
        details[protocol]["most_popular"] = {
            f"{m}@{TOP_N}": _stat([x.get(f"{m}@{TOP_N}") for x in rows]) for m in METRICS
        }
        details[protocol]["users_per_seed"] = [r["users"][protocol] for r in runs]
    details["basis"] = runs[0]["models"]["k1"]["evals"]["standard"]["k1"].get("diversity_basis") if runs else None
    details["seconds_per_seed"] = [r["wall_seconds"] for r in runs]
    details["train_seconds"] = {m: [r["models"][m]["train_seconds"] for r in runs] for m in MODELS}
    details["best_step"] = {m: [r["models"][m]["best_step"] for r in runs] for m in MODELS}
    return table, details


class _ExactStore:
    """In-process exact inner-product search over external ids (the engine's Searcher protocol)."""

    def __init__(self, table: np.ndarray, external: np.ndarray) -> None:
        self.searcher = ExactSearcher(table)
        self.external = external

    def search(
        self, name: str, queries: np.ndarray, top_k: int, *, with_versions: bool = True, max_generation: Any = None
    ) -> Any:
        from workers.infra.vector_store import SearchResult

        ids, scores = self.searcher.search(queries, top_k)
        return SearchResult(ids=np.where(ids > 0, self.external[ids], 0), scores=scores)


class _Served:
    """The served model as the engine sees it (one fixed version, no generations)."""

    def __init__(self, tower: Any) -> None:
        self.version = self.collection = "bench"
        self.tower = tower
        self.generation = 0
        self.max_generation: int | None = None


def serving_cost(dataset: str, seed: int, tower_arrays: dict[str, Any], requests: int = 300) -> dict[str, Any]:
    """Per-request time of :class:`RecallEngine` (one user, top_k 50, K=4, exact in-process search) with
    diversity 0 and 0.5, and of the diversity step alone (merge of the K x 50 candidates)."""
    from model.export import external_heldout
    from model.serving import ServingTower
    from schemas.messages import RecallRequest
    from workers.recall.engine import RecallEngine

    ds = DataSettings(split_seed=seed).load(dataset)
    tower = ServingTower(
        tower_arrays["table"],
        tower_arrays["bilinear"],
        tower_arrays["routing_logits"],
        iters=int(tower_arrays["iters"]),
        model_version="bench",
        vocab=ds.vocab,
    )

    served = _Served(tower)

    class Live:
        def current(self, *, force: bool = False) -> _Served:
            return served

    engine = RecallEngine(Live(), _ExactStore(tower.table, ds.vocab.ids), categories=ds.items)
    held = external_heldout(_both(ds), ds.vocab)
    histories = [h.tolist() for h in held.histories][:requests]
    out: dict[str, Any] = {"k": tower.k_max, "top_k": TOP_N, "requests": len(histories), "dataset": dataset}
    per_lambda: dict[float, list[float]] = {}
    for _ in range(2):  # the first pass warms caches; the second is measured
        for lam in (0.0, 0.5):
            times = []
            for h in histories:
                request = RecallRequest(hist_item=[h], top_k=TOP_N, diversity=lam)
                t0 = time.perf_counter()
                engine.answer([request])
                times.append((time.perf_counter() - t0) * 1000)
            per_lambda[lam] = times
    for lam, times in per_lambda.items():
        out[f"lambda_{lam:g}"] = {"mean": round(float(np.mean(times)), 3), "p50": round(float(np.median(times)), 3)}
        out[f"lambda_{lam:g}"]["p99"] = round(float(np.percentile(times, 99)), 3)
    # the diversity step alone, on the same candidates
    step = []
    interests = tower.interests(histories)
    for row in interests:
        result = engine.store.search("bench", row, TOP_N)
        t0 = time.perf_counter()
        engine.diverse_merge(tower, result.ids, result.scores, TOP_N, 0.5)
        step.append((time.perf_counter() - t0) * 1000)
    out["diversity_step"] = {"mean": round(float(np.mean(step)), 3), "p99": round(float(np.percentile(step, 99)), 3)}
    out["added_mean"] = round(out["lambda_0.5"]["mean"] - out["lambda_0"]["mean"], 3)
    return out


def goals(table: dict[str, Any]) -> dict[str, Any]:
    """The issue's goals, measured on this table."""
    std, mix = table["standard"], table["mixed"]
    k1, k4 = mix["k1"]["recall@50"], mix["k4"]["recall@50"]
    ratio = k4["mean"] / k1["mean"] if k1["mean"] else None
    out: dict[str, Any] = {
        "mixed_k4_over_k1_recall": round(ratio, 4) if ratio is not None else None,
        "mixed_k4_minus_k1_recall": round(k4["mean"] - k1["mean"], 4),
        "mixed_sd": {"k1": k1["sd"], "k4": k4["sd"]},
        "mixed_goal_met": bool(
            ratio is not None and ratio >= 1.10 and k4["mean"] - k1["mean"] > max(k1["sd"] or 0, k4["sd"] or 0)
        ),
    }
    base_cov, base_rec = std["k1"]["coverage@50"]["mean"], std["k1"]["recall@50"]["mean"]
    best: dict[str, Any] | None = None
    for key, entry in std.items():
        if key.startswith("k1") or entry["coverage@50"]["mean"] is None or base_cov is None:
            continue
        cov, rec = entry["coverage@50"]["mean"] / base_cov, entry["recall@50"]["mean"] / base_rec
        candidate = {"config": key, "coverage_ratio": round(cov, 4), "recall_ratio": round(rec, 4)}
        candidate["met"] = cov >= 1.3 and rec >= 0.95
        if best is None or (candidate["met"], cov if rec >= 0.95 else -1, rec) > (
            best["met"],
            best["coverage_ratio"] if best["recall_ratio"] >= 0.95 else -1,
            best["recall_ratio"],
        ):
            best = candidate
    out["standard_coverage_goal"] = best
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--datasets", nargs="+", default=["ml-100k", "amazonbook-demo"])
    parser.add_argument("--seeds", type=int, nargs="+", default=DEFAULT_SEEDS)
    parser.add_argument("--batches", type=int, default=3000)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=4, help="seeded pairings of the mixed-tastes protocol")
    parser.add_argument("--requests", type=int, default=300, help="requests timed per lambda for serving_cost_ms")
    args = parser.parse_args()
    threads = 1 if args.jobs > 1 else 0
    began = time.perf_counter()
    tasks: list[Task] = [
        (d, s, args.batches, threads, args.rounds, s == args.seeds[0]) for d in args.datasets for s in args.seeds
    ]
    runs: dict[str, list[dict[str, Any]]] = {d: [] for d in args.datasets}
    towers: dict[str, dict[str, Any]] = {}
    loads: list[tuple[float, float, float]] = [os.getloadavg()]
    for dataset, run in run_in_processes(run_seed, tasks, args.jobs):
        if "k4_tower" in run:
            towers[dataset] = run.pop("k4_tower")
        runs[dataset].append(run)
        loads.append(os.getloadavg())
        print(f"{dataset} seed {run['seed']}: {run['wall_seconds']} s, load {loads[-1][0]:.1f}", flush=True)
    summary: dict[str, Any] = {}
    for dataset in args.datasets:
        table, details = summarise(runs[dataset])
        cost = serving_cost(dataset, args.seeds[0], towers[dataset], args.requests) if dataset in towers else {}
        serving_cost_ms = {
            "lambda_0": cost.get("lambda_0", {}).get("mean"),
            "lambda_0.5": cost.get("lambda_0.5", {}).get("mean"),
        }
        main_out = {"seeds": sorted(args.seeds), **table, "serving_cost_ms": serving_cost_ms}
        stem = "multi_interest" if dataset == "ml-100k" else f"multi_interest_{dataset.split('-')[0]}"
        detail_out = {
            "benchmark": "multi_interest",
            "dataset": dataset,
            "machine": machine(),
            "budget": f"{args.batches} batches of 128, eval every {max(args.batches // 6, 1)}; best by valid Recall@50",
            "jobs": args.jobs,
            "threads_per_job": threads or "all",
            "mixed_rounds": args.rounds,
            "load_average_1m": {"min": min(x[0] for x in loads), "max": max(x[0] for x in loads)},
            "goals": goals(table),
            "serving_cost_ms": cost,
            **details,
            "runs": runs[dataset],
        }
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"{stem}.json").write_text(json.dumps(main_out, indent=2) + "\n")
        (RESULTS / f"{stem}_details.json").write_text(json.dumps(detail_out, indent=2, default=str) + "\n")
        summary[dataset] = {
            "goals": detail_out["goals"],
            "serving_cost_ms": cost,
            **{p: {k: v["recall@50"]["mean"] for k, v in table[p].items()} for p in ("standard", "mixed")},
        }
    summary["wall_seconds"] = round(time.perf_counter() - began, 1)
    summary["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(summary, indent=2, default=str))


if __name__ == "__main__":
    main()
