"""Coverage, intra-list diversity, novelty (hand-computed lists) and ComiRec's greedy diversity merge."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model.data.items import ItemCatalogue
from model.data.types import HeldOut
from model.diversity import (
    ItemContext,
    ItemFeatures,
    greedy_select,
    intra_list_diversity,
    merge_candidates,
    pairwise_similarity,
)
from model.evaluate import evaluate_model, evaluate_most_popular, recommend_detailed
from model.metrics import beyond_accuracy, merge_interests
from model.search import ExactSearcher
from model.vocab import ItemVocab

# Items 1..4: 1 = {A}, 2 = {A, B}, 3 = {C}; item 4 is not in the catalogue.
CATALOGUE = ItemCatalogue.from_mapping({1: ["A"], 2: ["A", "B"], 3: ["C"]})
# Clicks per row 0..4: ranks row 2 = 1, row 1 = 2, row 3 = 3, row 4 = 4 (tie with row 3: lower row first).
POPULARITY = np.array([0, 5, 9, 1, 1], dtype=np.int64)


def test_popularity_rank_is_one_for_the_most_clicked_ties_by_row() -> None:
    ctx = ItemContext(POPULARITY)
    assert ctx.popularity_rank.tolist() == [0, 2, 1, 3, 4]


def test_hand_computed_coverage_diversity_novelty() -> None:
    ctx = ItemContext(POPULARITY, catalogue=CATALOGUE)
    lists = [np.array([1, 2, 3]), np.array([4, 1])]
    got = beyond_accuracy(lists, ctx, top_n=50)
    # list 1: categories {A, B, C} = 3; Jaccard (1,2) = 1/2, (1,3) = 0, (2,3) = 0 -> ILD 1 - 1/6;
    #         ranks 2, 1, 3 -> 2.  list 2: {A} = 1; its one pair has no known similarity -> no ILD;
    #         ranks 4, 2 -> 3.
    assert got.coverage == pytest.approx(2.0)
    assert got.diversity == pytest.approx(5 / 6)
    assert got.novelty == pytest.approx(2.5)
    assert got.basis == "categories"
    assert got.as_dict()["coverage@50"] == 2.0


def test_only_the_top_n_counts_and_padding_is_ignored() -> None:
    ctx = ItemContext(POPULARITY, catalogue=CATALOGUE)
    got = beyond_accuracy([np.array([3, 0, 1, 2])], ctx, top_n=2)  # [3, 0] -> item 3 only
    assert (got.coverage, got.diversity, got.novelty) == (1.0, None, 3.0)


def test_diversity_by_item_vectors_where_there_are_no_categories() -> None:
    vectors = np.array([[0, 0], [1, 0], [0, 1], [1, 1], [2, 0]], dtype=np.float32)
    ctx = ItemContext(POPULARITY, vectors=vectors)
    got = beyond_accuracy([np.array([1, 2, 3])], ctx, top_n=50)
    # cosines: (1,2) = 0, (1,3) = (2,3) = 1/sqrt(2)
    assert got.diversity == pytest.approx(1 - (2 / math.sqrt(2)) / 3)
    assert got.coverage is None and got.basis == "vectors"


def test_categories_first_then_vectors_for_the_pairs_without() -> None:
    vectors = np.array([[0, 0], [1, 0], [1, 0], [0, 1], [1, 1]], dtype=np.float32)
    sim, known = pairwise_similarity(ItemContext(POPULARITY, catalogue=CATALOGUE, vectors=vectors).features([1, 2, 4]))
    # (1, 2): both categorised -> Jaccard 1/2 (their vectors are identical); (1, 4), (2, 4): cosine 1/sqrt 2.
    assert sim[0, 1] == pytest.approx(0.5)
    assert sim[0, 2] == pytest.approx(1 / math.sqrt(2)) and sim[1, 2] == pytest.approx(1 / math.sqrt(2))
    assert known.all()
    assert intra_list_diversity(ItemFeatures(None, None)) is None


def test_greedy_hand_worked() -> None:
    scores = np.array([1.0, 0.9, 0.8, 0.1])
    cats = np.array([[1, 0], [1, 0], [0, 1], [0, 1]], dtype=bool)
    sim, _ = pairwise_similarity(ItemFeatures(cats))
    assert greedy_select(scores, sim, 2, 0.0).tolist() == [0, 1]
    # spread = 1.0 - 0.9: values 10, 9, 8, 1; after item 0 the A items pay lambda each
    assert greedy_select(scores, sim, 2, 0.5).tolist() == [0, 1]  # 9 - 0.5 > 8
    assert greedy_select(scores, sim, 2, 2.0).tolist() == [0, 2]  # 9 - 2 < 8
    assert greedy_select(scores, sim, 10, 2.0).tolist() == [0, 2, 1, 3]  # fewer candidates than asked
    with pytest.raises(ValueError):
        greedy_select(scores, sim, 2, -1.0)


@settings(max_examples=200, deadline=None)
@given(
    data=st.lists(
        st.tuples(st.integers(0, 1000), st.integers(0, 3)), min_size=2, max_size=40, unique_by=lambda t: t[0]
    ),
    top_n=st.integers(2, 20),
    lambdas=st.lists(st.sampled_from([0.0, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 50.0]), min_size=2, max_size=2),
)
def test_a_larger_lambda_never_lowers_the_lists_diversity(
    data: list[tuple[int, int]], top_n: int, lambdas: list[float]
) -> None:
    """Hand-made catalogue: one category per item (4 categories), distinct scores."""
    data = sorted(data, key=lambda t: -t[0])
    scores = np.array([s / 100 for s, _ in data])
    cats = np.zeros((len(data), 4), dtype=bool)
    cats[np.arange(len(data)), [c for _, c in data]] = True
    sim, _ = pairwise_similarity(ItemFeatures(cats))
    low, high = sorted(lambdas)

    def ild(lam: float) -> float:
        pick = greedy_select(scores, sim, top_n, lam)
        value = intra_list_diversity(ItemFeatures(cats[pick]))
        return 1.0 if value is None else value

    assert ild(high) >= ild(low) - 1e-12


def test_merge_candidates_is_merge_interests_on_all_candidates() -> None:
    rng = np.random.default_rng(4)
    ids = rng.integers(0, 15, size=(3, 8))
    scores = rng.standard_normal((3, 8)).astype(np.float32)
    cand, cand_scores, src = merge_candidates(ids, scores)
    assert cand.tolist() == merge_interests(ids[None], scores[None], 24)[0].tolist()
    assert np.all(np.diff(cand_scores) <= 0)
    for item, s, k in zip(cand.tolist(), cand_scores.tolist(), src.tolist(), strict=True):
        assert s == pytest.approx(float(scores[ids == item].max())) and item in ids[k].tolist()


class _Tower:
    """K = 2 fixed interests per user (the history's last item picks them); zero for an empty history."""

    def __init__(self, dim: int, k: int, seed: int) -> None:
        self.table = np.random.default_rng(seed).standard_normal((50, k, dim)).astype(np.float32)

    def interests(self, histories: list[np.ndarray]) -> np.ndarray:
        return np.stack([self.table[int(h[-1])] if len(h) else np.zeros_like(self.table[0]) for h in histories])


def _setup() -> tuple[_Tower, ExactSearcher, HeldOut, ItemContext]:
    rng = np.random.default_rng(0)
    items = rng.standard_normal((31, 4)).astype(np.float32)
    items[0] = 0
    catalogue = ItemCatalogue.from_mapping({i: [f"g{i % 5}"] for i in range(1, 31)})
    held = HeldOut(np.arange(6), [rng.integers(1, 31, 4) for _ in range(6)], [rng.integers(1, 31, 5) for _ in range(6)])
    ctx = ItemContext(np.bincount(rng.integers(1, 31, 200), minlength=31), catalogue=catalogue, vocab=None)
    return _Tower(4, 2, 1), ExactSearcher(items), held, ctx


def test_evaluate_with_diversity_zero_is_the_plain_merge() -> None:
    tower, searcher, held, ctx = _setup()
    plain = evaluate_model(tower, searcher, held, top_n=5)  # type: ignore[arg-type]
    zero = evaluate_model(tower, searcher, held, top_n=5, context=ctx, diversity=0.0)  # type: ignore[arg-type]
    assert plain.metrics == zero.metrics and plain.diagnostics == zero.diagnostics
    assert zero.beyond is not None and zero.beyond.coverage is not None
    assert "coverage@5" in zero.as_dict() and "diversity_lambda" not in zero.as_dict()


def test_evaluate_with_diversity_broadens_the_lists() -> None:
    tower, searcher, held, ctx = _setup()
    runs = [
        evaluate_model(tower, searcher, held, top_n=5, context=ctx, diversity=lam)  # type: ignore[arg-type]
        for lam in (0.0, 0.5, 5.0)
    ]
    coverage = [r.beyond.coverage for r in runs if r.beyond is not None]
    assert coverage[0] is not None and coverage[1] is not None and coverage[2] is not None
    assert coverage[0] < coverage[1] <= coverage[2]
    # at a large lambda every category among a user's K x N candidates is in its list (up to N)
    reachable = []
    for user in range(held.num_users):
        ids, _ = searcher.search(tower.interests([held.histories[user]])[0], 5)
        cats = ctx.categories(np.unique(ids))
        assert cats is not None
        reachable.append(min(5, int(cats.any(axis=0).sum())))
    assert coverage[2] == pytest.approx(np.mean(reachable))
    with pytest.raises(ValueError):
        recommend_detailed(tower, searcher, held.histories, 5, diversity=0.5)  # type: ignore[arg-type]


def test_most_popular_gets_the_same_metrics() -> None:
    _, _, held, ctx = _setup()
    report = evaluate_most_popular(ctx.popularity, held, top_n=5, context=ctx)
    assert report.beyond is not None and report.beyond.novelty == pytest.approx(3.0)  # ranks 1..5


def test_catalogue_lookup_by_external_id_through_the_vocabulary() -> None:
    vocab = ItemVocab(np.array([0, 300, 100, 200], dtype=np.int64), np.zeros(4))
    catalogue = ItemCatalogue.from_mapping({100: ["x"], 200: ["y"], 300: ["x", "y"]}, {100: "One"})
    ctx = ItemContext(np.array([0, 1, 1, 1]), catalogue=catalogue, vocab=vocab)
    got = ctx.categories(np.array([1, 2, 3]))
    assert got is not None and got.tolist() == [[True, True], [True, False], [False, True]]
    assert catalogue.categories_of(300) == ("x", "y") and catalogue.categories_of(5) == ()
    assert catalogue.title_of(100) == "One" and catalogue.title_of(200) == ""
