"""Ablations of the multi-interest model on ML-100K, one change at a time from the PaddleRec
reference configuration, several seeds each; mean +- sd of the user-weighted valid + test metrics
and the interest diagnostics. Results are rewritten after every run (a partial sweep is kept).

    python -m bench.ablation [--seeds 2026 7 1 2 3] [--jobs 2] [--variants ref_k4 ref_k1 ...]
        [--out bench/results/ablation.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from bench.common import RESULTS, machine, run_in_processes
from bench.quality import DEFAULT_SEEDS, REFERENCE, Variant, run_task, summarise_variant

# Budget of every variant unless it says otherwise: 3000 batches of 128 (384k samples).
BATCHES = 3000
REF = dict(REFERENCE)  # PaddleRec's K=4 MIND, whatever the defaults are
VARIANTS: dict[str, Variant] = {
    # One change at a time from the reference (listed in the order they are run).
    "ref_k4": (REF, {}),
    "ref_k1": ({**REF, "k_max": 1}, {}),
    "comirec_k4": ({**REF, "routing": "comirec"}, {}),
    "hard_k4": ({**REF, "readout": "hard"}, {}),
    "remi_reg_k4": (REF, {"routing_reg": 3.0}),
    "ref_k2": ({**REF, "k_max": 2}, {}),
    "comirec_dr_k4": ({**REF, "routing": "comirec_dr"}, {}),
    "pow4_k4": ({**REF, "pow_p": 4.0}, {}),
    "remi_hn_k4": (REF, {"hard_neg_beta": 1.0}),
    "batch512_k4": (REF, {"batch_size": 512, "batches": 750, "eval_every": 125}),
    "early_stop_k4": (REF, {"batches": 12000, "eval_every": 500, "patience": 3}),
    "ref_k8": ({**REF, "k_max": 8}, {}),
    # Combinations of what helps, K for the combination, and the larger budget for K=1 too.
    "comirec_hard_k4": ({**REF, "routing": "comirec", "readout": "hard"}, {}),
    "hard_k2": ({**REF, "readout": "hard", "k_max": 2}, {}),
    "early_stop_k1": ({**REF, "k_max": 1}, {"batches": 12000, "eval_every": 500, "patience": 3}),
}


def resummarise(path: Path) -> None:
    """Recompute every variant's summary from its stored runs (after sweeps run in several parts)."""
    report = json.loads(path.read_text())
    for name, old in report["variants"].items():
        summary = summarise_variant(old["runs"])
        summary["seeds"] = [r["seed"] for r in summary["runs"]]
        summary["mind"], summary["train"] = VARIANTS.get(name, (old["mind"], old["train"]))
        report["variants"][name] = summary
    per_variant = {name: v["seeds"] for name, v in report["variants"].items()}
    report["seeds"] = sorted({seed for seeds in per_variant.values() for seed in seeds})
    report["seeds_per_variant"] = per_variant
    path.write_text(json.dumps(report, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=DEFAULT_SEEDS)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "ablation.json")
    parser.add_argument("--resummarise", action="store_true", help="only recompute the summaries from the runs")
    args = parser.parse_args()
    if args.resummarise:
        resummarise(args.out)
        return
    began = time.perf_counter()
    previous: dict[str, Any] = json.loads(args.out.read_text()).get("variants", {}) if args.out.exists() else {}
    # A variant rerun with other seeds keeps its stored runs for the seeds not rerun now.
    runs: dict[str, list[dict[str, Any]]] = {
        v: [r for r in previous.get(v, {}).get("runs", []) if r["seed"] not in args.seeds] for v in args.variants
    }
    threads = 1 if args.jobs > 1 else 0
    tasks = [("ml-100k", v, seed, VARIANTS[v], BATCHES, threads) for v in args.variants for seed in args.seeds]
    report: dict[str, Any] = {}
    for variant, run in run_in_processes(run_task, tasks, args.jobs):
        runs[variant].append(run)
        print(f"{variant} seed {run['seed']}: {run['wall_seconds']} s", flush=True)
        done = {v: summarise_variant(r) for v, r in runs.items() if r}
        for v in done:
            done[v]["mind"], done[v]["train"] = VARIANTS[v][0], VARIANTS[v][1]
        report = {
            "benchmark": "ablation",
            "machine": machine(),
            "dataset": "ml-100k",
            "budget": f"{BATCHES} batches of 128 unless the variant's train overrides say otherwise",
            "jobs": args.jobs,
            "threads_per_job": threads or "all",
            "seeds": args.seeds,
            "wall_seconds": round(time.perf_counter() - began, 1),
            "variants": {**previous, **done},
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({v: s["recall@50"] for v, s in report.get("variants", {}).items()}, indent=1))


if __name__ == "__main__":
    main()
