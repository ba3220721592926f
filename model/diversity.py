"""How alike recommended items are, and the controllable (diversity-aware) merge of ComiRec.

Similarity of two items: the Jaccard index of their category sets when both have categories (one
category each: 1 if the same, else 0), otherwise the cosine of their item vectors when both have one,
otherwise unknown (0 in the merge, left out of the intra-list diversity).

:func:`greedy_select` is ComiRec's controllable aggregation (arXiv 2005.09347, section 3.3): from a
user's ``K x N`` candidates pick ``N`` one at a time, each step the candidate with the largest
``score / spread - lambda * sum of its similarities to the items already picked``, where ``spread``
is the score range of today's list (best minus ``N``-th best candidate), so lambda does not depend on
the model's score scale: at lambda 1 an item as alike as one picked item loses the whole spread of
today's list. Maximising ``sum score + lambda * sum over pairs (1 - similarity)`` step by step gives
exactly this rule; with one category per item it is ComiRec's (penalty = lambda x items already
picked in the same category). ``lambda = 0`` is the plain merge by score.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from model.data.items import ItemCatalogue
from model.data.types import IntArray
from model.vocab import ItemVocab

FloatMatrix = npt.NDArray[np.float32]
FloatArray = npt.NDArray[np.float64]
BoolMatrix = npt.NDArray[np.bool_]

__all__ = [
    "ItemContext",
    "ItemFeatures",
    "Similarity",
    "greedy_select",
    "intra_list_diversity",
    "merge_candidates",
    "pairwise_similarity",
]


@dataclass(frozen=True)
class ItemFeatures:
    """What is known of ``n`` items: multi-hot categories ``[n, C]`` (all False = no category) and/or
    vectors ``[n, D]`` (all zero = no vector)."""

    categories: BoolMatrix | None = None
    vectors: FloatMatrix | None = None


class Similarity:
    """Pairwise similarities of ``n`` items, one row at a time (:meth:`row`: what the greedy merge needs,
    ``N`` rows) or all at once (:meth:`matrix`, for a short list's diversity). Nothing ``[n, n]`` is kept:
    the categories as bit sets ``[n, W]`` (``W`` 64-bit words, one for up to 64 categories among the
    items) and the unit vectors ``[n, D]``; a row costs ``O(n W)`` popcounts plus, where some item lacks
    categories, one matrix-vector product. (Multi-threaded BLAS on small products is slow on a loaded
    machine: neither path needs a matrix product.)"""

    def __init__(self, features: ItemFeatures, n: int | None = None) -> None:
        cats, vecs = features.categories, features.vectors
        self.n = cats.shape[0] if cats is not None else (vecs.shape[0] if vecs is not None else (n or 0))
        self.has_cat = np.zeros(self.n, dtype=bool)
        self._words: npt.NDArray[np.uint64] | None = None  # [n, W] category bit sets
        self._sizes = np.zeros(self.n, dtype=np.float64)  # categories per item
        if cats is not None and self.n:
            local = cats[:, cats.any(axis=0)]
            packed = np.packbits(local, axis=1)
            pad = (-packed.shape[1]) % 8 if packed.shape[1] else 8
            self._words = np.ascontiguousarray(np.pad(packed, ((0, 0), (0, pad)))).view(np.uint64)
            self._sizes = np.bitwise_count(self._words).sum(axis=1, dtype=np.float64)
            self.has_cat = self._sizes > 0
        self.unit: FloatMatrix | None = None
        self.has_vec = np.zeros(self.n, dtype=bool)
        if vecs is not None and self.n and not self.has_cat.all():
            v = np.asarray(vecs, dtype=np.float32)
            norms = np.linalg.norm(v, axis=1)
            self.has_vec = norms > 0
            self.unit = (v / np.where(self.has_vec, norms, 1.0)[:, None]).astype(np.float32)

    def _jaccard(self, i: int) -> FloatArray:
        """Jaccard index of item ``i``'s categories with every item's; 0 where either has none."""
        out = np.zeros(self.n, dtype=np.float64)
        words = self._words
        if words is None:
            return out
        if words.shape[1] == 1:
            inter = np.bitwise_count(words[:, 0] & words[i, 0]).astype(np.float64)
        else:
            inter = np.bitwise_count(words & words[i]).sum(axis=1, dtype=np.float64)
        union = self._sizes[i] + self._sizes
        union -= inter
        np.divide(inter, union, out=out, where=union > 0)
        return out

    def _by_vector(self, i: int) -> BoolMatrix:
        """Items whose similarity to ``i`` the vectors decide: both have a vector, not both categories."""
        return self.has_vec[i] & self.has_vec & ~(self.has_cat[i] & self.has_cat)

    def row(self, i: int) -> FloatArray:
        """Similarities of item ``i`` to every item; 0 where unknown."""
        sim = self._jaccard(i)
        if self.unit is None:
            return sim
        return np.where(self._by_vector(i), self.unit @ self.unit[i], sim)

    def matrix(self) -> tuple[FloatArray, BoolMatrix]:
        """``[n, n]`` similarities and which pairs are known (``O(n^2)``: for short lists)."""
        if not self.n:
            return np.zeros((0, 0), dtype=np.float64), np.zeros((0, 0), dtype=bool)
        sim = np.stack([self.row(i) for i in range(self.n)])
        known = self.has_cat[:, None] & self.has_cat[None, :]
        if self.unit is not None:
            known |= self.has_vec[:, None] & self.has_vec[None, :]
        return sim, known


def pairwise_similarity(features: ItemFeatures, n: int | None = None) -> tuple[FloatArray, BoolMatrix]:
    """``[n, n]`` similarities and which pairs are known (see the module docstring); ``n`` is needed
    only when ``features`` holds neither categories nor vectors (then nothing is known)."""
    return Similarity(features, n).matrix()


def intra_list_diversity(features: ItemFeatures) -> float | None:
    """``1 - mean pairwise similarity`` over the known pairs of one list; None with no known pair."""
    sim, known = pairwise_similarity(features)
    upper = np.triu(known, 1)
    if not upper.any():
        return None
    return float(1.0 - sim[upper].mean())


def merge_candidates(ids: IntArray, scores: npt.NDArray[np.floating]) -> tuple[IntArray, FloatArray, IntArray]:
    """One user's ``[K, n]`` candidates -> all distinct real ids by best score (stable: equal scores
    keep interest order, as :func:`model.metrics.merge_interests`), their scores and source interest."""
    n = ids.shape[-1]
    flat_ids, flat_scores = ids.reshape(-1), scores.reshape(-1)
    order = np.argsort(-flat_scores, kind="stable")
    ranked = flat_ids[order]
    _, first = np.unique(ranked, return_index=True)
    first = np.sort(first)
    first = first[ranked[first] != 0]
    return ranked[first], flat_scores[order][first].astype(np.float64), (order[first] // n).astype(np.int64)


def greedy_select(scores: FloatArray, similarity: FloatArray | Similarity, top_n: int, lam: float) -> IntArray:
    """Positions (in pick order) of ``top_n`` candidates: ComiRec's greedy rule (module docstring).

    ``scores`` are sorted best first (as :func:`merge_candidates` returns them); ties go to the
    better-ranked candidate. ``lam == 0`` returns the first ``top_n`` positions. ``similarity``: the
    ``[m, m]`` matrix, or a :class:`Similarity` whose rows are computed as they are needed.

    Each candidate's objective is ``score / (lambda x spread)`` minus the running sum of its
    similarities to the items picked so far: one row (``m`` similarities) is subtracted per pick, so a
    :class:`Similarity` costs ``O(top_n x m)`` time and ``O(m)`` memory beyond its features, never an
    ``[m, m]`` matrix.
    """
    m = int(scores.shape[0])
    n = min(top_n, m)
    if lam < 0:
        raise ValueError("lambda must be >= 0")
    if lam == 0 or n == 0:
        return np.arange(n, dtype=np.int64)
    spread = float(scores[0] - scores[n - 1])
    objective = np.asarray(scores, dtype=np.float64) / (lam * (spread if spread > 0 else 1.0))  # score / lambda
    row = similarity.row if isinstance(similarity, Similarity) else similarity.__getitem__
    picked = np.empty(n, dtype=np.int64)
    for step in range(n):
        best = int(objective.argmax())  # first maximum: the better-ranked candidate
        picked[step] = best
        objective -= row(best)  # the running sum of similarities to the picked items grows by one row
        objective[best] = -np.inf
    return picked


class ItemContext:
    """What the evaluator knows of the items in its id space (rows): training popularity, and where
    available the catalogue's categories (looked up through ``vocab``) and item vectors ``[rows, D]``.

    ``popularity_rank[row]``: 1 for the most clicked item, ties by row (row 0 = padding, never ranked).
    """

    def __init__(
        self,
        popularity: IntArray,
        *,
        catalogue: ItemCatalogue | None = None,
        vocab: ItemVocab | None = None,
        vectors: FloatMatrix | None = None,
    ) -> None:
        counts = np.asarray(popularity, dtype=np.int64)
        self.popularity = counts
        self.catalogue = catalogue
        self.vocab = vocab
        self.vectors = vectors
        order = np.lexsort((np.arange(counts.shape[0] - 1), -counts[1:])) + 1  # rows 1.. by clicks, then row
        rank = np.zeros(counts.shape[0], dtype=np.int64)
        rank[order] = np.arange(1, order.shape[0] + 1)
        self.popularity_rank = rank

    def with_vectors(self, vectors: FloatMatrix | None) -> ItemContext:
        return ItemContext(self.popularity, catalogue=self.catalogue, vocab=self.vocab, vectors=vectors)

    @property
    def basis(self) -> str | None:
        """What the similarities rest on: 'categories', 'vectors', 'categories+vectors' or None."""
        known = (("categories", self.catalogue), ("vectors", self.vectors))
        parts = [name for name, there in known if there is not None]
        return "+".join(parts) or None

    def categories(self, rows: IntArray) -> BoolMatrix | None:
        if self.catalogue is None:
            return None
        rows = np.asarray(rows, dtype=np.int64)
        ids = self.vocab.external(rows) if self.vocab is not None else rows
        return self.catalogue.matrix(ids)

    def features(self, rows: IntArray) -> ItemFeatures:
        rows = np.asarray(rows, dtype=np.int64)
        vecs = None
        if self.vectors is not None:
            inside = (rows > 0) & (rows < self.vectors.shape[0])
            vecs = np.where(inside[:, None], self.vectors[np.where(inside, rows, 0)], 0.0).astype(np.float32)
        return ItemFeatures(self.categories(rows), vecs)
