"""Offline quality and training speed: MIND (K=4), single-interest (K=1) and MostPopular on
ML-100K (valid + test users) and the AmazonBook demo slice, over several seeds, same budget.

    python -m bench.quality [--batches 3000] [--seeds 2026 7] [--datasets ml-100k amazonbook-demo]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import emit, peak_rss_mb
from model.checkpoint import open_checkpoint
from model.config import MindConfig, TrainConfig
from model.data.types import Dataset
from model.evaluate import evaluate_model, evaluate_most_popular
from model.export import UserTower, item_table
from model.search import ExactSearcher
from model.train import Trainer, configure_threads, train
from workers.settings import DataSettings

VARIANTS: dict[str, dict[str, Any]] = {
    "mind_k4": {},
    "mind_k4_pow2": {"pow_p": 2.0},
    "mind_k1": {"k_max": 1},
}


def run_variant(ds: Dataset, mind: MindConfig, cfg: TrainConfig, workdir: Path) -> dict[str, Any]:
    trainer = Trainer(ds.train, mind, cfg, item_count=ds.item_count)
    result = train(trainer, batches=cfg.batches, checkpoint_dir=workdir, valid=ds.valid, top_n=50)
    best = open_checkpoint(workdir, "best")
    net = best.load_net()
    tower, searcher = UserTower(net, best.manifest.version), ExactSearcher(item_table(net))
    out: dict[str, Any] = {
        "best_step": best.manifest.step,
        "samples_per_s": round(result.samples_per_s, 1),
        "train_seconds": round(result.train_seconds, 1),
    }
    for split, held in (("valid", ds.valid), ("test", ds.test)):
        out[split] = evaluate_model(tower, searcher, held, top_n=50).as_dict()
    return out


def summarise(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """Mean over seeds of the user-weighted mean over valid + test users."""
    per_seed = []
    for run in runs:
        v, t = run["valid"], run["test"]
        per_seed.append((v[key] * v["users"] + t[key] * t["users"]) / (v["users"] + t["users"]))
    return {"mean": round(float(np.mean(per_seed)), 4), "per_seed": [round(x, 4) for x in per_seed]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, default=3000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[2026, 7])
    parser.add_argument("--datasets", nargs="+", default=["ml-100k", "amazonbook-demo"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    args = parser.parse_args()
    threads = configure_threads(0)
    began = time.perf_counter()
    report: dict[str, Any] = {
        "batches": args.batches,
        "batch_size": 128,
        "seeds": args.seeds,
        "threads": threads,
    }
    for name in args.datasets:
        section: dict[str, Any] = {}
        runs: dict[str, list[dict[str, Any]]] = {v: [] for v in args.variants}
        popular = []
        for seed in args.seeds:
            ds = DataSettings(split_seed=seed).load(name)
            section["items"] = ds.item_count - 1
            section["truth"] = ds.test.truth_protocol
            cfg = TrainConfig(batches=args.batches, eval_every=max(args.batches // 6, 1), seed=seed)
            for variant in args.variants:
                with tempfile.TemporaryDirectory() as tmp:
                    runs[variant].append(run_variant(ds, MindConfig(**VARIANTS[variant]), cfg, Path(tmp)))
            pop = {
                s: evaluate_most_popular(ds.train.popularity(), h, top_n=50).as_dict()
                for s, h in (("valid", ds.valid), ("test", ds.test))
            }
            popular.append(pop)
        for variant, vruns in runs.items():
            section[variant] = {
                "recall@50": summarise(vruns, "recall@50"),
                "ndcg@50": summarise(vruns, "ndcg@50"),
                "hitrate@50": summarise(vruns, "hitrate@50"),
                "samples_per_s": round(float(np.mean([r["samples_per_s"] for r in vruns])), 1),
                "runs": vruns,
            }
        section["most_popular"] = {
            "recall@50": summarise(popular, "recall@50"),
            "ndcg@50": summarise(popular, "ndcg@50"),
            "hitrate@50": summarise(popular, "hitrate@50"),
        }
        report[name] = section
    report["wall_seconds"] = round(time.perf_counter() - began, 1)
    report["peak_rss_mb"] = peak_rss_mb()
    emit("quality", report)


if __name__ == "__main__":
    main()
