"""Offline evaluation: user tower -> K interests -> top-N per interest -> merge -> metrics.

The same evaluator scores MIND (any K) and the MostPopular baseline, with any search backend; given
an :class:`~model.diversity.ItemContext` it also reports what the lists cover (coverage, intra-list
diversity, novelty), and ``diversity`` > 0 merges the ``K x N`` candidates with ComiRec's greedy
selection instead of by score (:mod:`model.diversity`). An interest that is all zero (an empty
history, or one beyond a user's dynamic interest count) contributes no candidates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from model.data.types import HeldOut, IntArray
from model.diversity import ItemContext, Similarity, greedy_select, merge_candidates
from model.export import UserTower
from model.metrics import (
    BeyondAccuracy,
    InterestDiagnostics,
    RankingMetrics,
    beyond_accuracy,
    interest_diagnostics,
    merge_with_sources,
    ranking_metrics,
)
from model.search import Searcher


@dataclass(frozen=True)
class EvalReport:
    name: str
    metrics: RankingMetrics
    truth_protocol: str
    backend: str
    diagnostics: InterestDiagnostics | None = None
    beyond: BeyondAccuracy | None = None
    diversity_lambda: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        out = {
            "name": self.name,
            "backend": self.backend,
            "truth": self.truth_protocol,
            f"recall@{self.metrics.top_n}": round(self.metrics.recall, 6),
            f"ndcg@{self.metrics.top_n}": round(self.metrics.ndcg, 6),
            f"hitrate@{self.metrics.top_n}": round(self.metrics.hitrate, 6),
            "users": self.metrics.users,
        }
        if self.beyond is not None:
            out.update(self.beyond.as_dict())
        if self.diversity_lambda:
            out["diversity_lambda"] = self.diversity_lambda
        if self.diagnostics is not None:
            out["interests"] = self.diagnostics.as_dict()
        return out


@dataclass(frozen=True)
class Recommendations:
    interests: np.ndarray  # [B, K, D]
    merged: list[IntArray]  # per user, best first
    sources: list[IntArray]  # per user, the interest each merged item came from
    distinct: IntArray  # [B] distinct real ids among the K x N candidates


def recommend_detailed(
    tower: UserTower,
    searcher: Searcher,
    histories: list[IntArray],
    top_n: int,
    *,
    diversity: float = 0.0,
    context: ItemContext | None = None,
) -> Recommendations:
    """Interests, top-N per interest merged (by score, or with ``diversity`` > 0 by ComiRec's greedy
    rule on ``context``'s similarities), and where each kept item came from."""
    if diversity < 0:
        raise ValueError("diversity must be >= 0")
    interests = tower.interests(histories)  # [B, K, D]
    batch, k, dim = interests.shape
    if not batch:
        return Recommendations(interests, [], [], np.zeros(0, dtype=np.int64))
    ids, scores = searcher.search(interests.reshape(batch * k, dim), top_n)
    ids, scores = ids.reshape(batch, k, -1), scores.reshape(batch, k, -1)
    silent = ~np.any(interests != 0, axis=-1)  # [B, K] interests that carry nothing
    if silent.any():
        ids, scores = np.where(silent[..., None], 0, ids), np.where(silent[..., None], -np.inf, scores)
    if diversity == 0:
        merged, sources, distinct = merge_with_sources(ids, scores, top_n)
        return Recommendations(interests, merged, sources, distinct)
    if context is None:
        raise ValueError("diversity > 0 needs an ItemContext (categories and/or item vectors)")
    merged, sources = [], []
    distinct = np.zeros(batch, dtype=np.int64)
    for user in range(batch):
        cand, cand_scores, cand_src = merge_candidates(ids[user], scores[user])
        distinct[user] = cand.shape[0]
        sim = Similarity(context.features(cand), cand.shape[0])
        pick = greedy_select(cand_scores, sim, top_n, diversity)
        merged.append(cand[pick])
        sources.append(cand_src[pick])
    return Recommendations(interests, merged, sources, distinct)


def recommend(tower: UserTower, searcher: Searcher, histories: list[IntArray], top_n: int) -> list[IntArray]:
    """Top-N merged recommendations for each history (K interests, top-N each)."""
    if not histories:
        return []
    return recommend_detailed(tower, searcher, histories, top_n).merged


def evaluate_model(
    tower: UserTower,
    searcher: Searcher,
    heldout: HeldOut,
    *,
    top_n: int,
    name: str = "mind",
    backend: str = "exact",
    context: ItemContext | None = None,
    diversity: float = 0.0,
    merge_context: ItemContext | None = None,
) -> EvalReport:
    """Ranking metrics plus interest diagnostics (pairwise cosine, hit share, distinct candidates) and,
    with ``context``, coverage / diversity / novelty. ``diversity`` > 0: the greedy merge on
    ``merge_context``'s similarities (default ``context``; the serving side uses the model's own item
    vectors where there are no categories, while the metric may use a fixed reference)."""
    recs = recommend_detailed(
        tower, searcher, heldout.histories, top_n, diversity=diversity, context=merge_context or context
    )
    metrics = ranking_metrics(recs.merged, heldout.truths, top_n)
    diagnostics = (
        interest_diagnostics(recs.interests, recs.merged, recs.sources, recs.distinct, heldout.truths)
        if heldout.histories
        else None
    )
    beyond = beyond_accuracy(recs.merged, context, top_n) if context is not None else None
    return EvalReport(name, metrics, heldout.truth_protocol, backend, diagnostics, beyond, diversity)


def most_popular(popularity: IntArray, top_n: int) -> IntArray:
    """The ``top_n`` most clicked item ids (ties by id), never id 0."""
    counts = np.asarray(popularity, dtype=np.int64).copy()
    counts[0] = -1
    order = np.lexsort((np.arange(counts.shape[0]), -counts))
    return order[:top_n][counts[order[:top_n]] >= 0].astype(np.int64)


def evaluate_most_popular(
    popularity: IntArray, heldout: HeldOut, *, top_n: int, context: ItemContext | None = None
) -> EvalReport:
    top = most_popular(popularity, top_n)
    recs = [top] * heldout.num_users
    beyond = beyond_accuracy(recs, context, top_n) if context is not None else None
    metrics = ranking_metrics(recs, heldout.truths, top_n)
    return EvalReport("most_popular", metrics, heldout.truth_protocol, "exact", beyond=beyond)
