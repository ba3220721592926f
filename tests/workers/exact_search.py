"""What the fake vector stores of unit tests answer: exact inner-product search of a table whose row i
is item id i (row 0 is padding, never returned), best first, at most ``top_k`` per query."""

from __future__ import annotations

import numpy as np

from workers.infra.vector_store import SearchResult


def exact_search(table: np.ndarray, queries: np.ndarray, top_k: int) -> SearchResult:
    scores = queries @ table[1:].T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :top_k]
    return SearchResult(ids=order + 1, scores=np.take_along_axis(scores, order, axis=1))
