"""Nearest-neighbour search backends for evaluation. Milvus has one too (workers.infra.vector_store)."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import numpy.typing as npt

from model.data.types import IntArray

FloatMatrix = npt.NDArray[np.float32]
_SCORE_BUDGET = 1 << 25  # scores held at once by the exact backend (128 MiB of float32)


class Searcher(Protocol):
    def search(self, queries: FloatMatrix, top_k: int) -> tuple[IntArray, FloatMatrix]:
        """``queries [nq, D]`` -> ``(ids [nq, top_k], scores [nq, top_k])`` by inner product,
        best first; rows with fewer hits are padded with id 0 and score -inf."""
        ...


class ExactSearcher:
    """Brute-force inner product over an item table (row = item id; row 0 is padding, never returned)."""

    def __init__(self, item_vectors: FloatMatrix, *, chunk: int = 1024) -> None:
        self._items = np.ascontiguousarray(item_vectors, dtype=np.float32)
        self._chunk = chunk

    def search(self, queries: FloatMatrix, top_k: int) -> tuple[IntArray, FloatMatrix]:
        n_items = self._items.shape[0] - 1
        k = min(top_k, n_items)
        ids = np.zeros((queries.shape[0], top_k), dtype=np.int64)
        scores = np.full((queries.shape[0], top_k), -np.inf, dtype=np.float32)
        chunk = max(1, min(self._chunk, _SCORE_BUDGET // max(n_items, 1)))  # bound the [chunk, items] matrix
        for lo in range(0, queries.shape[0], chunk):
            q = np.asarray(queries[lo : lo + chunk], dtype=np.float32)
            s = q @ self._items[1:].T  # drop padding row 0
            part = (
                np.argpartition(-s, k - 1, axis=1)[:, :k] if k < n_items else np.tile(np.arange(n_items), (len(q), 1))
            )
            part_scores = np.take_along_axis(s, part, axis=1)
            order = np.argsort(-part_scores, axis=1, kind="stable")
            ids[lo : lo + len(q), :k] = np.take_along_axis(part, order, axis=1) + 1
            scores[lo : lo + len(q), :k] = np.take_along_axis(part_scores, order, axis=1)
        return ids, scores
