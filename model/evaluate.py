"""Offline evaluation: user tower -> K interests -> top-N per interest -> merge -> metrics.

The same evaluator scores MIND (any K) and the MostPopular baseline, with any search backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from model.data.types import HeldOut, IntArray
from model.export import UserTower
from model.metrics import (
    InterestDiagnostics,
    RankingMetrics,
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
        if self.diagnostics is not None:
            out["interests"] = self.diagnostics.as_dict()
        return out


@dataclass(frozen=True)
class Recommendations:
    interests: np.ndarray  # [B, K, D]
    merged: list[IntArray]  # per user, best first
    sources: list[IntArray]  # per user, the interest each merged item came from
    distinct: IntArray  # [B] distinct real ids among the K x N candidates


def recommend_detailed(tower: UserTower, searcher: Searcher, histories: list[IntArray], top_n: int) -> Recommendations:
    """Interests, top-N per interest merged by score, and where each kept item came from."""
    interests = tower.interests(histories)  # [B, K, D]
    batch, k, dim = interests.shape
    if not batch:
        return Recommendations(interests, [], [], np.zeros(0, dtype=np.int64))
    ids, scores = searcher.search(interests.reshape(batch * k, dim), top_n)
    merged, sources, distinct = merge_with_sources(ids.reshape(batch, k, -1), scores.reshape(batch, k, -1), top_n)
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
) -> EvalReport:
    """Ranking metrics plus interest diagnostics (pairwise cosine, hit share, distinct candidates)."""
    recs = recommend_detailed(tower, searcher, heldout.histories, top_n)
    metrics = ranking_metrics(recs.merged, heldout.truths, top_n)
    diagnostics = (
        interest_diagnostics(recs.interests, recs.merged, recs.sources, recs.distinct, heldout.truths)
        if heldout.histories
        else None
    )
    return EvalReport(name, metrics, heldout.truth_protocol, backend, diagnostics)


def most_popular(popularity: IntArray, top_n: int) -> IntArray:
    """The ``top_n`` most clicked item ids (ties by id), never id 0."""
    counts = np.asarray(popularity, dtype=np.int64).copy()
    counts[0] = -1
    order = np.lexsort((np.arange(counts.shape[0]), -counts))
    return order[:top_n][counts[order[:top_n]] >= 0].astype(np.int64)


def evaluate_most_popular(popularity: IntArray, heldout: HeldOut, *, top_n: int) -> EvalReport:
    top = most_popular(popularity, top_n)
    recs = [top] * heldout.num_users
    return EvalReport("most_popular", ranking_metrics(recs, heldout.truths, top_n), heldout.truth_protocol, "exact")
