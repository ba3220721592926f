"""Delta publication: rows written per round and the quality served, against publishing everything.

    python -m bench.delta_publication [--items 100000] [--rounds 8] [--thresholds 0 0.05 0.1 0.2]

A MIND model is trained on a synthetic catalogue of ``--items`` items, then further for ``--rounds``
rounds of ``--batches`` batches (a refresh round's training). After each round every threshold keeps
its own published table, updated the way a delta updates the live collection
(:func:`workers.refresh.delta.diff`: an item's row is rewritten once it moved more than the threshold,
relative L2, from its published row). Measured per round and threshold: the share of the catalogue
written, and Recall@50 of the held-out test users with the round's user tower over the published
table (what a reply serves) and over the round's own table (what publishing everything serves).
Both searches are exact (numpy), so the difference is the delta's alone, not an index's.

The rounds train on the same training users (a refresh round trains on the new clicks plus a replay
sample): how far rows move per round depends on it; the share of rows a real round touches is in
``docs/serving.md``.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from bench.common import emit
from bench.stack import load_average
from model.config import MindConfig, TrainConfig
from model.data.synthetic import SyntheticSpec, synthetic_dataset
from model.evaluate import evaluate_model
from model.export import UserTower, item_table
from model.search import ExactSearcher
from model.train import Trainer, train
from workers.infra.vector_store import DEFAULT_SEGMENT, Rows
from workers.refresh.delta import diff
from workers.refresh.live_writer import Published

TOP_N = 50


def _published(table: np.ndarray) -> Published:
    ids = np.arange(1, table.shape[0], dtype=np.int64)
    return Published.of(0, {DEFAULT_SEGMENT: Rows.of(ids, table[1:], "v0", 0)}, table.shape[1])


def _step(published: Published, table: np.ndarray, threshold: float) -> tuple[Published, int]:
    """The published table after a delta at ``threshold`` against ``table``; and the rows written."""
    ids = np.arange(1, table.shape[0], dtype=np.int64)
    parts = np.full(ids.shape[0], DEFAULT_SEGMENT, dtype=object)
    delta = diff(published, ids, table[1:], parts, threshold, np.ones(len(published.item_ids), dtype=bool))
    vectors = published.vectors.copy()
    found, positions = published.find(ids[delta.write])
    vectors[positions[found]] = table[1:][delta.write[found]]
    rows = Rows.of(published.item_ids, vectors, "v", 0)
    return Published.of(published.generation + 1, {DEFAULT_SEGMENT: rows}, table.shape[1]), int(delta.write.shape[0])


def _table(published: Published) -> np.ndarray:
    """Row = item id (dense ids here), row 0 padding: what ExactSearcher searches."""
    out = np.zeros((int(published.item_ids.max()) + 1, published.vectors.shape[1]), dtype=np.float32)
    out[published.item_ids] = published.vectors
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--users", type=int, default=20_000)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--batches", type=int, default=300, help="training batches per round (refresh.train_batches)")
    p.add_argument("--base-batches", type=int, default=1500)
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.0, 0.05, 0.1, 0.2, 0.3])
    p.add_argument("--eval-users", type=int, default=1000)
    p.add_argument("--tag", help="write bench/results/delta_publication_<tag>.json")
    args = p.parse_args()
    load_before = load_average()
    began = time.perf_counter()
    spec = SyntheticSpec(num_users=args.users, num_items=args.items, num_clusters=max(50, args.items // 1000), seed=3)
    data = synthetic_dataset(spec, seed=3)
    test = data.test
    n_eval = min(args.eval_users, test.num_users)
    test = type(test)(test.user_ids[:n_eval], test.histories[:n_eval], test.truths[:n_eval], test.truth_protocol)
    mind = MindConfig(k_max=4)
    trainer = Trainer(data.train, mind, TrainConfig(seed=3))
    train(trainer, batches=args.base_batches, checkpoint_dir=None)
    base = item_table(trainer.net)
    published = {t: _published(base) for t in args.thresholds}
    rounds: list[dict[str, Any]] = []
    for r in range(1, args.rounds + 1):
        train(trainer, batches=args.batches, checkpoint_dir=None)
        table = item_table(trainer.net)
        tower = UserTower(trainer.net, f"v{r + 1}")
        full = evaluate_model(tower, ExactSearcher(table), test, top_n=TOP_N).metrics.recall
        row: dict[str, Any] = {"round": r, "full_recall_at_50": round(full, 5), "thresholds": {}}
        for t in args.thresholds:
            published[t], written = _step(published[t], table, t)
            served = evaluate_model(tower, ExactSearcher(_table(published[t])), test, top_n=TOP_N).metrics.recall
            row["thresholds"][str(t)] = {
                "rows_written_share": round(written / args.items, 5),
                "recall_at_50": round(served, 5),
            }
        rounds.append(row)
        print(f"round {r}: full {full:.4f} " + ", ".join(f"{t}: {v}" for t, v in row["thresholds"].items()), flush=True)
    summary: dict[str, dict[str, float]] = {}
    for t in args.thresholds:
        at: list[dict[str, float]] = [row["thresholds"][str(t)] for row in rounds]
        shares = [a["rows_written_share"] for a in at]
        served_at = np.array([a["recall_at_50"] for a in at])
        full_at = np.array([float(row["full_recall_at_50"]) for row in rounds])
        summary[str(t)] = {
            "rows_written_share_p50": float(np.median(shares)),
            "served_recall_at_50_last": float(served_at[-1]),
            "full_publish_recall_at_50_last": float(full_at[-1]),
            "served_vs_full_mean_relative": round(float(np.mean(served_at / full_at)) - 1.0, 5),
        }
    emit(
        f"delta_publication_{args.tag}" if args.tag else "delta_publication",
        {
            "items": args.items,
            "users": args.users,
            "eval_users": n_eval,
            "rounds": args.rounds,
            "batches_per_round": args.batches,
            "by_threshold": summary,
            "per_round": rounds,
            "seconds": round(time.perf_counter() - began, 1),
            "load_average_before": load_before,
            "load_average_after": load_average(),
        },
    )


if __name__ == "__main__":
    main()
