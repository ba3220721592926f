from __future__ import annotations

import math

import numpy as np
import pytest

from model.evaluate import most_popular
from model.metrics import merge_interests, ranking_metrics


def test_hand_worked_metrics() -> None:
    # user A: hits at ranks 0 and 2 of 4 truths; user B: no hit.
    recs = [np.array([5, 6, 7, 8]), np.array([1, 2, 3, 4])]
    truths = [np.array([5, 7, 9, 10]), np.array([99])]
    m = ranking_metrics(recs, truths, top_n=4)
    dcg = 1 / math.log2(2) + 1 / math.log2(4)
    idcg = 1 / math.log2(2) + 1 / math.log2(3)
    assert m.recall == pytest.approx((2 / 4 + 0) / 2)
    assert m.ndcg == pytest.approx((dcg / idcg + 0) / 2)
    assert m.hitrate == pytest.approx(0.5)
    assert m.users == 2


def test_only_top_n_counts() -> None:
    m = ranking_metrics([np.array([1, 2, 3])], [np.array([3])], top_n=2)
    assert m.recall == 0.0 and m.hitrate == 0.0


def test_perfect_ranking_has_ndcg_one() -> None:
    m = ranking_metrics([np.array([3, 1, 2, 9])], [np.array([1, 2, 3])], top_n=4)
    assert m.recall == pytest.approx(1.0) and m.ndcg == pytest.approx(1.0)


def test_merge_orders_by_score_dedupes_and_drops_padding() -> None:
    ids = np.array([[[10, 11, 0], [11, 12, 13]]])  # one user, two interests
    scores = np.array([[[0.9, 0.5, -np.inf], [0.8, 0.7, 0.1]]], dtype=np.float32)
    merged = merge_interests(ids, scores, top_n=3)
    assert merged[0].tolist() == [10, 11, 12]


def test_merge_keeps_best_score_of_duplicates() -> None:
    ids = np.array([[[1, 2], [2, 3]]])
    scores = np.array([[[0.5, 0.1], [0.9, 0.2]]], dtype=np.float32)
    assert merge_interests(ids, scores, top_n=3)[0].tolist() == [2, 1, 3]


def test_most_popular_skips_padding_and_breaks_ties_by_id() -> None:
    popularity = np.array([100, 3, 5, 5, 0])
    assert most_popular(popularity, 3).tolist() == [2, 3, 1]
