"""Recall@N, NDCG@N and HitRate@N with ComiRec's definitions, and the interest merge."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt

from model.data.types import IntArray


@dataclass(frozen=True)
class RankingMetrics:
    """Per-user means. NDCG is 0 for users without a hit (ComiRec averages over all users)."""

    recall: float
    ndcg: float
    hitrate: float
    users: int
    top_n: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def merge_interests(ids: IntArray, scores: npt.NDArray[np.float32], top_n: int) -> list[IntArray]:
    """Merge per-interest candidate lists of each user into one ranked list.

    ``ids, scores [B, K, n]``: candidates of every interest. All ``K * n`` candidates of a user are
    ordered by score (descending; stable, so equal scores keep interest order), duplicates keep
    their best score, id 0 (padding / no hit) is dropped, and the best ``top_n`` are kept.
    """
    batch = ids.shape[0]
    flat_ids = ids.reshape(batch, -1)
    order = np.argsort(-scores.reshape(batch, -1), axis=1, kind="stable")
    ranked = np.take_along_axis(flat_ids, order, axis=1)
    merged: list[IntArray] = []
    for row in ranked:
        _, first = np.unique(row, return_index=True)
        keep = row[np.sort(first)]
        merged.append(keep[keep != 0][:top_n])
    return merged


def ranking_metrics(recommended: Sequence[IntArray], truths: Sequence[IntArray], top_n: int) -> RankingMetrics:
    """ComiRec's evaluation: recall = hits / |truth|; DCG over hit ranks; IDCG over the hit count."""
    if len(recommended) != len(truths):
        raise ValueError("one recommendation list per truth set is needed")
    recall_sum = ndcg_sum = 0.0
    hit_users = 0
    for recs, truth in zip(recommended, truths, strict=True):
        truth_set = set(np.asarray(truth).tolist())
        if not truth_set:
            raise ValueError("empty truth set")
        hits = 0
        dcg = 0.0
        for rank, item in enumerate(np.asarray(recs)[:top_n].tolist()):
            if item in truth_set:
                hits += 1
                dcg += 1.0 / math.log2(rank + 2)
        recall_sum += hits / len(truth_set)
        if hits:
            idcg = sum(1.0 / math.log2(r + 2) for r in range(hits))
            ndcg_sum += dcg / idcg
            hit_users += 1
    n = max(len(truths), 1)
    return RankingMetrics(recall_sum / n, ndcg_sum / n, hit_users / n, len(truths), top_n)
