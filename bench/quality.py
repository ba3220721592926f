"""Offline quality and training speed: MIND K=4 (the best K=4 configuration), PaddleRec's K=4
reference, single-interest K=1 (the served default) and MostPopular on ML-100K (valid + test
users) and the AmazonBook demo slice, over several seeds, same budget. Each run also reports how
different the interests are (mean pairwise cosine, share of hits per interest, distinct candidates).

    python -m bench.quality [--batches 3000] [--seeds 2026 7 1 2 3] [--jobs 2]
        [--datasets ml-100k amazonbook-demo] [--from-ablation bench/results/ablation.json]

``--from-ablation`` takes the ML-100K runs from a ``bench.ablation`` sweep whose variant has the
same effective configuration and budget (nothing is retrained; MostPopular is recomputed), and
keeps the sections of data sets not rerun from the previous quality.json, marked as carried over.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import RESULTS, emit, peak_rss_mb, run_in_processes
from model.checkpoint import open_checkpoint
from model.config import MindConfig, TrainConfig
from model.data.types import Dataset
from model.evaluate import evaluate_model, evaluate_most_popular
from model.export import UserTower, item_table
from model.search import ExactSearcher
from model.train import Trainer, configure_threads, train
from workers.settings import DataSettings

# A variant: MindConfig overrides and TrainConfig overrides, applied on top of the defaults.
Variant = tuple[dict[str, Any], dict[str, Any]]
# PaddleRec's MIND: K=4, fixed shared routing logits, soft label-aware readout with pow_p 1.
REFERENCE: dict[str, Any] = {"k_max": 4, "routing": "reference", "readout": "soft", "pow_p": 1.0}
VARIANTS: dict[str, Variant] = {
    "mind_k4": ({"k_max": 4}, {}),  # the best K=4 found (bench.ablation): the defaults with K=4
    "mind_k4_reference": (REFERENCE, {}),
    "mind_k1": ({"k_max": 1}, {}),  # the served default
}
DEFAULT_SEEDS = [2026, 7, 1, 2, 3]


def run_variant(ds: Dataset, mind: MindConfig, cfg: TrainConfig, workdir: Path) -> dict[str, Any]:
    began = time.perf_counter()
    trainer = Trainer(ds.train, mind, cfg, item_count=ds.item_count)
    result = train(trainer, batches=cfg.batches, checkpoint_dir=workdir, valid=ds.valid, top_n=50)
    best = open_checkpoint(workdir, "best")
    net = best.load_net()
    tower, searcher = UserTower(net, best.manifest.version), ExactSearcher(item_table(net))
    out: dict[str, Any] = {
        "seed": cfg.seed,
        "best_step": best.manifest.step,
        "batches_run": result.batches,
        "samples_per_s": round(result.samples_per_s, 1),
        "train_seconds": round(result.train_seconds, 1),
    }
    for split, held in (("valid", ds.valid), ("test", ds.test)):
        out[split] = evaluate_model(tower, searcher, held, top_n=50).as_dict()
    out["wall_seconds"] = round(time.perf_counter() - began, 1)
    return out


def run_task(task: tuple[str, str, int, Variant, int, int]) -> tuple[str, dict[str, Any]]:
    """One (dataset, variant, seed) training + evaluation; runs in a worker process."""
    dataset, name, seed, (mind_over, train_over), batches, threads = task
    configure_threads(threads)
    ds = DataSettings(split_seed=seed).load(dataset)
    fields: dict[str, Any] = {"batches": batches, "eval_every": max(batches // 6, 1), "seed": seed}
    fields.update(train_over)
    cfg = TrainConfig(**fields)
    with tempfile.TemporaryDirectory() as tmp:
        return name, run_variant(ds, MindConfig(**mind_over), cfg, Path(tmp))


def user_weighted(run: dict[str, Any], key: str) -> float:
    """The user-weighted mean over valid + test users of one run."""
    v, t = run["valid"], run["test"]
    return float((v[key] * v["users"] + t[key] * t["users"]) / (v["users"] + t["users"]))


def summarise(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """Mean and sd over seeds of the user-weighted mean over valid + test users."""
    per_seed = [user_weighted(r, key) for r in runs]
    return {
        "mean": round(float(np.mean(per_seed)), 4),
        "sd": round(float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else 0.0, 4),
        "per_seed": [round(x, 4) for x in per_seed],
    }


def summarise_interests(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Interest diagnostics averaged over seeds and over valid + test."""
    diags = [r[s]["interests"] for r in runs for s in ("valid", "test") if "interests" in r[s]]
    if not diags:
        return {}
    cos = [d["mean_pairwise_cosine"] for d in diags if d["mean_pairwise_cosine"] is not None]
    return {
        "mean_pairwise_cosine": round(float(np.mean(cos)), 4) if cos else None,
        "hit_share": [round(float(x), 4) for x in np.mean([d["hit_share"] for d in diags], axis=0)],
        "distinct_candidates": round(float(np.mean([d["distinct_candidates"] for d in diags])), 1),
    }


def summarise_variant(runs: list[dict[str, Any]]) -> dict[str, Any]:
    runs = sorted(runs, key=lambda r: r["seed"])
    return {
        "recall@50": summarise(runs, "recall@50"),
        "ndcg@50": summarise(runs, "ndcg@50"),
        "hitrate@50": summarise(runs, "hitrate@50"),
        "interests": summarise_interests(runs),
        "samples_per_s": round(float(np.mean([r["samples_per_s"] for r in runs])), 1),
        "wall_seconds_per_run": round(float(np.mean([r["wall_seconds"] for r in runs])), 1),
        "runs": runs,
    }


def effective(variant: Variant, batches: int) -> dict[str, Any]:
    """The configuration a variant trains with (seed aside); with one interest, routing, readout and
    pow_p compute the same thing and are normalised away."""
    fields: dict[str, Any] = {"batches": batches, "eval_every": max(batches // 6, 1)}
    fields.update(variant[1])
    mind = MindConfig(**variant[0]).model_dump()
    if mind["k_max"] == 1 and mind["routing"] != "comirec_dr":
        mind.update(routing="reference", readout="soft", pow_p=1.0)
    train_fields = TrainConfig(**fields).model_dump()
    train_fields.pop("seed")
    return {"mind": mind, "train": train_fields}


def runs_from_ablation(
    path: Path, variant: Variant, batches: int, seeds: list[int]
) -> tuple[str, list[dict[str, Any]]]:
    """The ablation variant with the same effective configuration, and its runs for ``seeds``."""
    from bench.ablation import VARIANTS as ABLATIONS

    stored = json.loads(path.read_text())["variants"]
    want = effective(variant, batches)
    for name, candidate in ABLATIONS.items():
        if name in stored and effective(candidate, batches) == want:
            runs = [r for r in stored[name]["runs"] if r["seed"] in seeds]
            if sorted(r["seed"] for r in runs) == sorted(seeds):
                return name, runs
    raise SystemExit(f"no ablation variant in {path} matches {variant} with seeds {seeds}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, default=3000)
    parser.add_argument("--seeds", type=int, nargs="+", default=DEFAULT_SEEDS)
    parser.add_argument("--datasets", nargs="+", default=["ml-100k", "amazonbook-demo"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--jobs", type=int, default=1, help="parallel runs (each with one kernel thread if > 1)")
    parser.add_argument("--from-ablation", type=Path, help="take the ML-100K runs from this bench.ablation output")
    args = parser.parse_args()
    threads = configure_threads(0 if args.jobs <= 1 else 1)
    began = time.perf_counter()
    report: dict[str, Any] = {
        "batches": args.batches,
        "batch_size": TrainConfig().batch_size,
        "seeds": args.seeds,
        "threads": threads,
        "jobs": args.jobs,
        "default_mind": MindConfig().model_dump(),
    }
    for name in args.datasets:
        section: dict[str, Any] = {}
        runs: dict[str, list[dict[str, Any]]] = {v: [] for v in args.variants}
        popular = []
        for seed in args.seeds:
            ds = DataSettings(split_seed=seed).load(name)
            section["items"] = ds.item_count - 1
            section["truth"] = ds.test.truth_protocol
            pop = {
                s: evaluate_most_popular(ds.train.popularity(), h, top_n=50).as_dict()
                for s, h in (("valid", ds.valid), ("test", ds.test))
            }
            popular.append(pop)
        if args.from_ablation and name == "ml-100k":
            for v in args.variants:
                source, runs[v] = runs_from_ablation(args.from_ablation, VARIANTS[v], args.batches, args.seeds)
                section.setdefault("from_ablation", {})[v] = source
        else:
            tasks = [(name, v, seed, VARIANTS[v], args.batches, threads) for v in args.variants for seed in args.seeds]
            for variant, run in run_in_processes(run_task, tasks, args.jobs):
                runs[variant].append(run)
        for variant, vruns in runs.items():
            section[variant] = summarise_variant(vruns)
            section[variant]["mind"], section[variant]["train"] = VARIANTS[variant]
        section["most_popular"] = {
            "recall@50": summarise(popular, "recall@50"),
            "ndcg@50": summarise(popular, "ndcg@50"),
            "hitrate@50": summarise(popular, "hitrate@50"),
        }
        report[name] = section
    if args.from_ablation:
        previous_path = RESULTS / "quality.json"
        previous = json.loads(previous_path.read_text()) if previous_path.exists() else {}
        for name, section in previous.items():
            if isinstance(section, dict) and "most_popular" in section and name not in report:
                carried = previous.get("machine", {}).get("date", "?")
                report[name] = {**section, "carried_over": f"not rerun; from the run of {carried}"}
    report["wall_seconds"] = round(time.perf_counter() - began, 1)
    report["peak_rss_mb"] = peak_rss_mb()
    emit("quality", report)


if __name__ == "__main__":
    main()
