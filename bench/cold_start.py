"""Cold-start rules of the fast path against a full rebuild on the same clicks (ML-100K, the served
default MindConfig() / TrainConfig(), several seeds).

    python -m bench.cold_start [--seeds 2026 7 1] [--batches 3000] [--share 0.1] [--selections random late]

Per seed (split seed = training seed, as bench.quality) and per way of choosing the new items:

* new items: ``--share`` of the items with a training click, either ``random`` (seeded) or ``late``
  (those whose first click in the whole log is the latest: the titles released last);
* live version: trained on the training users' clicks with every click on a new item removed (no
  sample targets a new item, no history holds one), same seed and budget as the rebuild;
* introducing clicks: the removed clicks, each with the user's clicks before it (known items only);
* served = the live tower (its vocabulary: new items in histories are ignored, as served) over the
  live table plus one vector per new item by a rule: ``no_vector`` (new items absent: the floor),
  ``co_click`` (mean of the live rows of the introducing clicks' histories), ``steps_*`` (a few
  optimiser steps on the new rows alone, every other weight frozen: model.cold_start.few_steps, on
  the introducing clicks plus 4096 live training samples as background in which the new rows are
  negatives, weighted by the share of training clicks on known items; ``_no_background``: without);
* rebuild: trained on all training clicks, same seed and budget; ``rebuild_other_seed``: the same
  with another training seed (the noise of one retraining, for scale).

Recall@50 / HitRate@50 / NDCG@50 over the held-out users (valid + test, as bench.quality), and the
same restricted to held-out truths that are new items (users with at least one). Final weights
after the budget (no checkpoint is picked on the validation users, which are evaluated here).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.common import emit, peak_rss_mb
from model.cold_start import FrozenModel, IntroducingClicks, co_click_mean, few_steps
from model.config import ColdStartSteps, MindConfig, TrainConfig
from model.data.movielens import locate_ml100k, read_inter
from model.data.types import Dataset, HeldOut, IntArray, Sequences
from model.evaluate import evaluate_model
from model.export import UserTower, item_table
from model.net import MindNet
from model.sampling import ReferenceSampler
from model.search import ExactSearcher
from model.train import Trainer, configure_threads, train
from model.vocab import ItemVocab
from workers.settings import DataSettings, RefreshSettings

DEFAULT_SEEDS = [2026, 7, 1]
TOP_N = 50
# The 'steps' variants measured (the default, ColdStartSteps(), is always one of them).
STEP_VARIANTS: dict[str, ColdStartSteps] = {
    "steps_10_lr0.05": ColdStartSteps(steps=10, lr=0.05),
    "steps_30_lr0.05": ColdStartSteps(steps=30, lr=0.05),
    "steps_100_lr0.05": ColdStartSteps(steps=100, lr=0.05),
    "steps_30_lr0.2": ColdStartSteps(steps=30, lr=0.2),
    "steps_100_lr0.05_random_init": ColdStartSteps(steps=100, lr=0.05, init="random"),
    "steps_30_lr0.05_no_background": ColdStartSteps(steps=30, lr=0.05, background_weight=0.0),
}
BACKGROUND = 4096  # live training samples (ReferenceSampler) in which the new rows are negatives
METRICS = ("recall@50", "hitrate@50", "ndcg@50")


@dataclass(frozen=True)
class LiveSplit:
    seqs: Sequences  # training clicks without the new items, in live rows
    vocab: ItemVocab  # live row -> dataset row (the live version's "external" ids)
    clicks: IntroducingClicks  # histories in live rows, targets = index into ``new``
    background: IntroducingClicks  # live training samples: histories -> known targets (live rows)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def first_click_time(ds: Dataset) -> np.ndarray:
    """Per dataset row, the timestamp of its first click in the whole ML-100K log."""
    raw = read_inter(locate_ml100k())
    rows = ds.vocab.rows(raw.item)
    first = np.full(ds.item_count, np.iinfo(np.int64).max, dtype=np.int64)
    keep = rows > 0
    np.minimum.at(first, rows[keep], raw.ts[keep])
    return first


def pick_new(ds: Dataset, selection: str, share: float, seed: int) -> IntArray:
    """``share`` of the items with a training click (dataset rows, ascending)."""
    candidates = np.flatnonzero(ds.train.popularity() > 0)
    candidates = candidates[candidates > 0]
    count = max(1, round(share * candidates.size))
    if selection == "random":
        return np.sort(np.random.default_rng(seed).choice(candidates, size=count, replace=False))
    if selection == "late":
        first = first_click_time(ds)[candidates]
        order = np.lexsort((candidates, -first))  # latest first click first, ties by row
        return np.sort(candidates[order[:count]])
    raise ValueError(f"unknown selection {selection!r}")


def live_split(train_seqs: Sequences, new: IntArray, maxlen: int, seed: int) -> LiveSplit:
    """The live version's training data and the clicks that introduce the new items."""
    n_rows = train_seqs.item_count
    is_new = np.zeros(n_rows, dtype=bool)
    is_new[new] = True
    known = np.flatnonzero(~is_new)[1:]  # dataset rows the live version knows, ascending
    to_live = np.zeros(n_rows, dtype=np.int64)
    to_live[known] = np.arange(1, known.size + 1)
    to_new = np.full(n_rows, -1, dtype=np.int64)
    to_new[new] = np.arange(new.size)
    seqs: list[list[int]] = []
    histories: list[IntArray] = []
    targets: list[int] = []
    for u in range(train_seqs.num_users):
        seq = train_seqs.sequence(u)
        live = to_live[seq]
        seqs.append(live[live > 0].tolist())
        for k in np.flatnonzero(is_new[seq]).tolist():
            before = live[:k]
            histories.append(before[before > 0][-maxlen:])
            targets.append(int(to_new[seq[k]]))
    live_seqs = Sequences.from_lists(train_seqs.user_ids.tolist(), seqs, item_count=known.size + 1)
    vocab = ItemVocab(np.concatenate([[0], known]).astype(np.int64), np.zeros(known.size + 1))
    sampler = ReferenceSampler(
        live_seqs, maxlen=maxlen, min_clicks=TrainConfig().min_clicks, rng=np.random.default_rng(seed)
    )
    batch = sampler.sample(BACKGROUND)
    background = IntroducingClicks([h[:n] for h, n in zip(batch.hist, batch.seq_len, strict=True)], batch.target)
    return LiveSplit(live_seqs, vocab, IntroducingClicks(histories, np.asarray(targets, dtype=np.int64)), background)


class MappedSearcher:
    """Exact search over a served table whose row ``r`` is dataset row ``ids[r]``."""

    def __init__(self, table: np.ndarray, ids: IntArray) -> None:
        self._exact = ExactSearcher(table)
        self._ids = ids

    def search(self, queries: np.ndarray, top_k: int) -> tuple[IntArray, np.ndarray]:
        rows, scores = self._exact.search(queries, top_k)
        return self._ids[rows], scores


def concat(a: HeldOut, b: HeldOut) -> HeldOut:
    return HeldOut(
        np.concatenate([a.user_ids, b.user_ids]), a.histories + b.histories, a.truths + b.truths, a.truth_protocol
    )


def only_new(held: HeldOut, new: IntArray) -> HeldOut:
    """The users with a new item among their truths; truths cut to the new items."""
    keep = [i for i, t in enumerate(held.truths) if np.isin(t, new).any()]
    return HeldOut(
        held.user_ids[keep],
        [held.histories[i] for i in keep],
        [held.truths[i][np.isin(held.truths[i], new)] for i in keep],
        "held-out truths that are new items",
    )


def metrics(tower: UserTower, searcher: Any, held: HeldOut) -> dict[str, float]:
    report = evaluate_model(tower, searcher, held, top_n=TOP_N).as_dict()
    return {key: report[key] for key in (*METRICS, "users")}


def train_net(seqs: Sequences, seed: int, batches: int) -> tuple[MindNet, float]:
    cfg = TrainConfig(seed=seed, batches=batches)
    trainer = Trainer(seqs, MindConfig(), cfg)
    result = train(trainer, batches=batches, checkpoint_dir=None)
    return trainer.net, round(result.train_seconds, 1)


def run_selection(
    ds: Dataset, selection: str, share: float, seed: int, batches: int, held: HeldOut, rebuilds: dict[str, MindNet]
) -> dict[str, Any]:
    new = pick_new(ds, selection, share, seed)
    held_new = only_new(held, new)
    split = live_split(ds.train, new, MindConfig().maxlen, seed)
    live_net, live_s = train_net(split.seqs, seed, batches)
    model = FrozenModel.from_net(live_net)
    tower = UserTower(live_net, "live", vocab=split.vocab)
    out: dict[str, Any] = {
        "new_items": int(new.size),
        "new_item_train_clicks": int(split.clicks.targets.size),
        "live_train_clicks": split.seqs.num_events,
        "heldout_users_with_new_truth": held_new.num_users,
        "heldout_new_truths": int(sum(t.size for t in held_new.truths)),
        "live_train_seconds": live_s,
        "arms": {},
    }
    for name, net in rebuilds.items():
        full = (UserTower(net, name), ExactSearcher(item_table(net)))
        out["arms"][name] = {"all": metrics(*full, held), "new": metrics(*full, held_new)}

    def serve(name: str, vectors: np.ndarray | None, ready: np.ndarray | None, extra: dict[str, Any]) -> None:
        table, ids = model.table, split.vocab.ids
        if vectors is not None and ready is not None:
            table = np.vstack([table, vectors[ready]])
            ids = np.concatenate([ids, new[ready]])
        searcher = MappedSearcher(table, ids)
        out["arms"][name] = {"all": metrics(tower, searcher, held), "new": metrics(tower, searcher, held_new), **extra}
        log(f"  seed {seed} {selection} {name}: recall@50 {out['arms'][name]['all']['recall@50']:.4f}")

    # The background's share of the loss: the share of training clicks that are on known items.
    share_known = split.seqs.num_events / (split.seqs.num_events + split.clicks.targets.size)
    out["background_weight"] = round(share_known, 4)
    serve("no_vector", None, None, {})
    contexts: list[list[IntArray]] = [[] for _ in range(new.size)]
    for history, target in zip(split.clicks.histories, split.clicks.targets.tolist(), strict=True):
        contexts[target].append(history)
    joined = [np.concatenate(c) if c else np.zeros(0, dtype=np.int64) for c in contexts]
    began = time.perf_counter()
    co = co_click_mean(model.table, joined)
    serve("co_click", co.vectors, co.ready, {"waiting": co.waiting, "seconds": round(time.perf_counter() - began, 3)})
    for name, cfg in step_variants().items():
        began = time.perf_counter()
        init = None if cfg.init == "random" else co.vectors
        weight = share_known if cfg.background_weight > 0 else 0.0
        result = few_steps(
            model,
            split.clicks,
            int(new.size),
            cfg,
            init=init,
            background=split.background,
            background_weight=weight,
            seed=seed,
        )
        extra = {
            "waiting": result.waiting,
            "loss_before": round(result.losses[0], 4),
            "loss_after": round(result.losses[-1], 4),
            "seconds": round(time.perf_counter() - began, 3),
        }
        serve(name, result.vectors, result.ready, extra)
    return out


def step_variants() -> dict[str, ColdStartSteps]:
    """The measured variants; the served default is one of them (named ``steps_default`` if no other is it)."""
    default = RefreshSettings().cold_start_steps
    variants = dict(STEP_VARIANTS)
    if default not in variants.values():
        variants["steps_default"] = default
    return variants


def summarise(values: list[float]) -> dict[str, Any]:
    return {
        "mean": round(float(np.mean(values)), 4),
        "sd": round(float(np.std(values, ddof=1)) if len(values) > 1 else 0.0, 4),
        "per_seed": [round(v, 4) for v in values],
    }


def summarise_selection(runs: list[dict[str, Any]]) -> dict[str, Any]:
    arms = list(runs[0]["arms"])
    out: dict[str, Any] = {"arms": {}}
    for arm in arms:
        entry: dict[str, Any] = {}
        for part in ("all", "new"):
            for key in METRICS:
                entry[f"{part}_{key}"] = summarise([r["arms"][arm][part][key] for r in runs])
        diff = [r["arms"][arm]["all"]["recall@50"] - r["arms"]["rebuild"]["all"]["recall@50"] for r in runs]
        entry["served_minus_rebuild_recall50"] = summarise(diff)
        out["arms"][arm] = entry
    rules = [a for a in arms if a == "co_click" or a.startswith("steps")]
    by_all = max(rules, key=lambda a: out["arms"][a]["all_recall@50"]["mean"])
    by_new = max(rules, key=lambda a: out["arms"][a]["new_recall@50"]["mean"])
    best_steps = max((a for a in rules if a.startswith("steps")), key=lambda a: out["arms"][a]["all_recall@50"]["mean"])
    gap = [r["arms"][best_steps]["all"]["recall@50"] - r["arms"]["co_click"]["all"]["recall@50"] for r in runs]
    out["preferred_by_recall@50"] = by_all
    out["preferred_by_new_item_recall@50"] = by_new
    out["best_steps_minus_co_click_recall50"] = {"arm": best_steps, **summarise(gap)}
    winner = out["arms"][by_all]["served_minus_rebuild_recall50"]
    out["served_minus_rebuild_recall50"] = {"rule": by_all, **winner, "within_0.01": abs(winner["mean"]) <= 0.01}
    for key in ("new_items", "new_item_train_clicks", "heldout_users_with_new_truth", "heldout_new_truths"):
        out[key] = [r[key] for r in runs]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=DEFAULT_SEEDS)
    parser.add_argument("--batches", type=int, default=TrainConfig().batches)
    parser.add_argument("--share", type=float, default=0.1)
    parser.add_argument("--selections", nargs="+", default=["random", "late"], choices=["random", "late"])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    threads = configure_threads(args.threads)
    began = time.perf_counter()
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in args.selections}
    for seed in args.seeds:
        ds = DataSettings(split_seed=seed).load("ml-100k")
        held = concat(ds.valid, ds.test)
        rebuild, rebuild_s = train_net(ds.train, seed, args.batches)
        other, _ = train_net(ds.train, seed + 1000, args.batches)
        log(f"seed {seed}: rebuilds trained ({rebuild_s} s each)")
        for selection in args.selections:
            run = run_selection(
                ds,
                selection,
                args.share,
                seed,
                args.batches,
                held,
                {"rebuild": rebuild, "rebuild_other_seed": other},
            )
            runs[selection].append({"seed": seed, "rebuild_train_seconds": rebuild_s, **run})
    report: dict[str, Any] = {
        "dataset": "ml-100k",
        "heldout": "valid + test users (bench.quality's), history = first 80% of their clicks",
        "seeds": args.seeds,
        "batches": args.batches,
        "batch_size": TrainConfig().batch_size,
        "share_new": args.share,
        "threads": threads,
        "mind": MindConfig().model_dump(),
        "step_variants": {name: cfg.model_dump() for name, cfg in step_variants().items()},
        "default": {
            "cold_start": RefreshSettings().cold_start,
            "cold_start_steps": RefreshSettings().cold_start_steps.model_dump(),
        },
        "summary": {s: summarise_selection(r) for s, r in runs.items() if r},
        "runs": runs,
        "wall_seconds": round(time.perf_counter() - began, 1),
        "peak_rss_mb": peak_rss_mb(),
    }
    emit("cold_start", report)


if __name__ == "__main__":
    main()
