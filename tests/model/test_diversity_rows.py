"""The diversity merge without an ``[n, n]`` matrix picks exactly what the dense implementation picked.

The oracle below is the previous implementation (dense ``[n, n]`` category similarities built at once,
the greedy loop subtracting rows of that matrix), kept here only to compare against.
"""

from __future__ import annotations

import numpy as np
import pytest

from model.diversity import FloatArray, ItemFeatures, Similarity, greedy_select, pairwise_similarity


class _DenseSimilarity:
    """The previous ``Similarity``: ``[n, n]`` Jaccard and known-pairs matrices built in the constructor."""

    def __init__(self, features: ItemFeatures, n: int | None = None) -> None:
        cats, vecs = features.categories, features.vectors
        self.n = cats.shape[0] if cats is not None else (vecs.shape[0] if vecs is not None else (n or 0))
        self.sim = np.zeros((self.n, self.n), dtype=np.float64)
        self.known = np.zeros((self.n, self.n), dtype=bool)
        has_cat = np.zeros(self.n, dtype=bool)
        if cats is not None and self.n:
            local = cats[:, cats.any(axis=0)]
            packed = np.packbits(local, axis=1)
            pad = (-packed.shape[1]) % 8 if packed.shape[1] else 8
            words = np.ascontiguousarray(np.pad(packed, ((0, 0), (0, pad)))).view(np.uint64)
            if words.shape[1] == 1:
                inter = np.bitwise_count(words[:, 0, None] & words[None, :, 0]).astype(np.float64)
            else:
                inter = np.bitwise_count(words[:, None, :] & words[None, :, :]).sum(axis=-1, dtype=np.float64)
            sizes = np.bitwise_count(words).sum(axis=1, dtype=np.float64)
            union = sizes[:, None] + sizes[None, :]
            union -= inter
            np.divide(inter, union, out=self.sim, where=union > 0)
            has_cat = sizes > 0
            self.known = has_cat[:, None] & has_cat[None, :]
        self.unit: np.ndarray | None = None
        if vecs is not None and self.n and not has_cat.all():
            v = np.asarray(vecs, dtype=np.float32)
            norms = np.linalg.norm(v, axis=1)
            has_vec = norms > 0
            self.unit = (v / np.where(has_vec, norms, 1.0)[:, None]).astype(np.float32)
            self.by_vector = has_vec[:, None] & has_vec[None, :] & ~self.known

    def row(self, i: int) -> FloatArray:
        if self.unit is None:
            return self.sim[i]
        return np.where(self.by_vector[i], self.unit @ self.unit[i], self.sim[i])

    def matrix(self) -> tuple[FloatArray, np.ndarray]:
        if self.unit is None:
            return self.sim, self.known
        cos = np.stack([self.unit @ u for u in self.unit]) if self.n else self.sim
        return np.where(self.by_vector, cos, self.sim), self.known | self.by_vector


def _dense_greedy(scores: FloatArray, similarity: _DenseSimilarity, top_n: int, lam: float) -> np.ndarray:
    m = int(scores.shape[0])
    n = min(top_n, m)
    if lam == 0 or n == 0:
        return np.arange(n, dtype=np.int64)
    spread = float(scores[0] - scores[n - 1])
    objective = np.asarray(scores, dtype=np.float64) / (lam * (spread if spread > 0 else 1.0))
    matrix = None if similarity.unit is not None else similarity.sim
    picked = np.empty(n, dtype=np.int64)
    for step in range(n):
        best = int(objective.argmax())
        picked[step] = best
        objective -= matrix[best] if matrix is not None else similarity.row(best)
        objective[best] = -np.inf
    return picked


def _features(rng: np.random.Generator, n: int, kind: str, n_cats: int) -> ItemFeatures:
    cats = vecs = None
    if kind in ("categories", "both"):
        cats = rng.random((n, n_cats)) < (1.5 / n_cats)  # ~1.5 categories per item; some have none
        if rng.random() < 0.5:
            single = rng.integers(0, n_cats, size=n)  # one category per item (ComiRec's case) ...
            cats = np.zeros((n, n_cats), dtype=bool)
            cats[np.arange(n), single] = True
            cats[rng.random(n) < 0.2] = False  # ... and some items outside the catalogue
    if kind in ("vectors", "both"):
        vecs = rng.standard_normal((n, 8)).astype(np.float32)
        vecs[rng.random(n) < 0.1] = 0.0  # items without a vector
    return ItemFeatures(cats, vecs)


def _scores(rng: np.random.Generator, n: int) -> FloatArray:
    raw = rng.standard_normal(n)
    raw[rng.random(n) < 0.2] = 0.5  # ties
    return np.sort(raw)[::-1].astype(np.float64)


@pytest.mark.parametrize("kind", ["categories", "vectors", "both", "neither"])
@pytest.mark.parametrize("n_cats", [5, 19, 70, 300])  # one 64-bit word, and several
def test_row_by_row_merge_picks_exactly_what_the_dense_one_picked(kind: str, n_cats: int) -> None:
    rng = np.random.default_rng(1000 * ["categories", "vectors", "both", "neither"].index(kind) + n_cats)
    for _ in range(12):
        n = int(rng.integers(1, 160))
        features = _features(rng, n, kind, n_cats)
        scores = _scores(rng, n)
        new, old = Similarity(features, n), _DenseSimilarity(features, n)
        for lam in (0.0, 0.05, 0.5, 2.0, 50.0):
            top_n = int(rng.integers(1, n + 5))
            assert greedy_select(scores, new, top_n, lam).tolist() == _dense_greedy(scores, old, top_n, lam).tolist()
        for i in rng.integers(0, n, size=5).tolist():
            assert np.array_equal(new.row(i), old.row(i))  # bit-identical, so the sums are too
        got_sim, got_known = new.matrix()
        want_sim, want_known = old.matrix()
        assert np.array_equal(got_sim, want_sim) and np.array_equal(got_known, want_known)


def test_a_dense_matrix_is_still_accepted() -> None:
    rng = np.random.default_rng(5)
    features = _features(rng, 40, "both", 19)
    scores = _scores(rng, 40)
    sim, _ = pairwise_similarity(features)
    assert greedy_select(scores, sim, 10, 0.7).tolist() == greedy_select(scores, Similarity(features), 10, 0.7).tolist()


def test_no_item_pair_matrix_is_kept() -> None:
    """Memory stays linear in the candidates: nothing of size n x n lives on the object."""
    n = 4000
    rng = np.random.default_rng(6)
    similarity = Similarity(_features(rng, n, "both", 19), n)
    sizes = [value.size for value in vars(similarity).values() if isinstance(value, np.ndarray)]
    assert sizes and max(sizes) <= n * 8  # [n, D] vectors at most; an [n, n] matrix would be 16e6
    pick = greedy_select(_scores(rng, n), similarity, 50, 0.3)
    assert len(set(pick.tolist())) == 50
