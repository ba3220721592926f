"""Recall@N, NDCG@N and HitRate@N with ComiRec's definitions, the interest merge, diagnostics of how
much the K interests differ, and what the lists cover (category coverage, intra-list diversity,
novelty)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt

from model.data.types import IntArray
from model.diversity import ItemContext, intra_list_diversity


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
    return merge_with_sources(ids, scores, top_n)[0]


def merge_with_sources(
    ids: IntArray, scores: npt.NDArray[np.float32], top_n: int
) -> tuple[list[IntArray], list[IntArray], IntArray]:
    """:func:`merge_interests` plus, per user, the interest each kept item came from (the one that
    scored it best) and the number of distinct real ids among all ``K * n`` candidates."""
    batch, _, n = ids.shape
    flat_ids = ids.reshape(batch, -1)
    order = np.argsort(-scores.reshape(batch, -1), axis=1, kind="stable")
    ranked = np.take_along_axis(flat_ids, order, axis=1)
    merged: list[IntArray] = []
    sources: list[IntArray] = []
    distinct = np.zeros(batch, dtype=np.int64)
    for row, (items, positions) in enumerate(zip(ranked, order, strict=True)):
        _, first = np.unique(items, return_index=True)
        first = np.sort(first)
        keep = items[first] != 0
        distinct[row] = int(keep.sum())
        merged.append(items[first][keep][:top_n])
        sources.append((positions[first][keep] // n)[:top_n])
    return merged, sources, distinct


@dataclass(frozen=True)
class InterestDiagnostics:
    """How different a user's K interests are, averaged over users.

    ``mean_pairwise_cosine``: mean cosine over the ``K(K-1)/2`` pairs of a user's interests (None for
    K = 1). ``hit_share``: share of all hits found by each user's most productive interest, second
    most, ... (sorted per user, so slot order does not matter; ``[1, 0, 0, 0]`` = one interest does
    all the work). ``distinct_candidates``: mean number of distinct items among a user's ``K * N``
    candidates (N when all interests retrieve the same list, ``K * N`` when they never overlap).
    """

    mean_pairwise_cosine: float | None
    hit_share: tuple[float, ...]
    distinct_candidates: float
    k: int

    def as_dict(self) -> dict[str, float | int | list[float] | None]:
        cos = self.mean_pairwise_cosine
        return {
            "mean_pairwise_cosine": None if cos is None else round(cos, 4),
            "hit_share": [round(x, 4) for x in self.hit_share],
            "distinct_candidates": round(self.distinct_candidates, 2),
            "k": self.k,
        }


def mean_pairwise_cosine(interests: npt.NDArray[np.float32]) -> float | None:
    """Mean over users (zero vectors skipped) of the mean cosine between their interests ``[B, K, D]``."""
    k = interests.shape[1]
    if k < 2:
        return None
    norms = np.linalg.norm(interests, axis=-1, keepdims=True)
    real = (norms[..., 0] > 1e-12).all(axis=1)
    if not real.any():
        return None
    unit = interests[real] / norms[real]
    gram = np.einsum("bkd,bjd->bkj", unit, unit)
    upper = np.triu_indices(k, 1)
    return float(gram[:, upper[0], upper[1]].mean())


def interest_diagnostics(
    interests: npt.NDArray[np.float32],
    merged: Sequence[IntArray],
    sources: Sequence[IntArray],
    distinct: IntArray,
    truths: Sequence[IntArray],
) -> InterestDiagnostics:
    k = interests.shape[1]
    share = np.zeros(k, dtype=np.float64)
    for recs, src, truth in zip(merged, sources, truths, strict=True):
        hit = np.isin(np.asarray(recs), np.asarray(truth))
        counts = np.bincount(np.asarray(src)[hit], minlength=k)
        share += np.sort(counts)[::-1]
    total = share.sum()
    return InterestDiagnostics(
        mean_pairwise_cosine=mean_pairwise_cosine(interests),
        hit_share=tuple(float(x) for x in (share / total if total else share)),
        distinct_candidates=float(np.mean(distinct)) if len(distinct) else 0.0,
        k=k,
    )


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


@dataclass(frozen=True)
class BeyondAccuracy:
    """What the lists cover, per-user means over users with a list (None where not computable).

    ``coverage``: distinct categories in the top-N list (needs a catalogue). ``diversity``: intra-list
    diversity, 1 - mean pairwise similarity of the list's items (by categories where both items have
    them, by item vectors otherwise; see :mod:`model.diversity`). ``novelty``: mean popularity rank of
    the recommended items (1 = the most clicked training item; higher = less popular, more novel).
    """

    coverage: float | None
    diversity: float | None
    novelty: float | None
    basis: str | None
    top_n: int

    def as_dict(self) -> dict[str, float | str | None]:
        n = self.top_n
        return {
            f"coverage@{n}": None if self.coverage is None else round(self.coverage, 6),
            f"diversity@{n}": None if self.diversity is None else round(self.diversity, 6),
            f"novelty@{n}": None if self.novelty is None else round(self.novelty, 4),
            "diversity_basis": self.basis,
        }


def beyond_accuracy(recommended: Sequence[IntArray], context: ItemContext, top_n: int) -> BeyondAccuracy:
    """Coverage, intra-list diversity and novelty of each top-``top_n`` list (``context``: items in the
    lists' id space)."""
    coverage: list[float] = []
    diversity: list[float] = []
    novelty: list[float] = []
    for recs in recommended:
        items = np.asarray(recs, dtype=np.int64)[:top_n]
        items = items[items > 0]
        if not items.size:
            continue
        features = context.features(items)
        if features.categories is not None:
            coverage.append(float(features.categories.any(axis=0).sum()))
        ild = intra_list_diversity(features)
        if ild is not None:
            diversity.append(ild)
        novelty.append(float(context.popularity_rank[np.minimum(items, context.popularity_rank.shape[0] - 1)].mean()))

    def mean(values: list[float]) -> float | None:
        return float(np.mean(values)) if values else None

    return BeyondAccuracy(mean(coverage), mean(diversity), mean(novelty), context.basis, top_n)
