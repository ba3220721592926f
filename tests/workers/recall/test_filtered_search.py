"""A filtered search on an approximate index (IVF_FLAT, what ``index_type: AUTO`` builds above
``flat_max_items``) on the real embedded Milvus: under a selective filter the probed lists hold fewer
passing rows than ``top_k``; the store searches those queries again over every list, so the reply
still has ``top_k`` items when that many pass, and exactly the passing items when fewer do."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from workers.infra.vector_store import VectorStore
from workers.settings import MilvusSettings

pytestmark = pytest.mark.integration

ROWS = 30_000
DIM = 8
TOP_K = 50


class Categories:
    """Every hundredth item is "some", every thousandth "rare" too; no segments."""

    def metadata_of(self, item_ids: np.ndarray) -> tuple[list[str], list[list[str]]]:
        cats = [["some", "rare"] if i % 1000 == 0 else ["some"] if i % 100 == 0 else [] for i in item_ids.tolist()]
        return [""] * len(cats), cats


@pytest.fixture(scope="module")
def ivf(milvus_uri: str) -> Iterator[tuple[VectorStore, str, np.ndarray]]:
    store = VectorStore(milvus_uri, MilvusSettings(index_type="IVF_FLAT"), metadata=Categories())
    name = "ivf_filtered"
    if store.has_collection(name):
        store.drop_collection(name)
    vectors = np.random.default_rng(3).standard_normal((ROWS + 1, DIM)).astype(np.float32)
    store.create_collection(name, DIM)
    store.insert(name, np.arange(1, ROWS + 1), vectors[1:], "v1")
    store.flush(name)  # sealed: searched through the index, not brute force as growing rows are
    store.build_index(name, wait=True, rows=ROWS)
    store.load(name)
    try:
        yield store, name, vectors
    finally:
        store.drop_collection(name)
        store.close()


def _exact(vectors: np.ndarray, queries: np.ndarray, passing: np.ndarray) -> list[list[int]]:
    scores = queries @ vectors[passing].T
    return [passing[np.argsort(-row, kind="stable")[:TOP_K]].tolist() for row in scores]


def test_a_selective_filter_still_fills_top_k_on_ivf(ivf: tuple[VectorStore, str, np.ndarray]) -> None:
    store, name, vectors = ivf
    queries = np.random.default_rng(4).standard_normal((16, DIM)).astype(np.float32)
    some = np.arange(100, ROWS + 1, 100)  # 300 of 30,000 rows pass
    found = store.search(name, queries, TOP_K, with_versions=False, filter='array_contains_any(categories, ["some"])')
    assert (found.ids != 0).all() and np.isin(found.ids, some).all()  # top_k each, only passing items
    rare = np.arange(1000, ROWS + 1, 1000)  # 30 pass: all of them, best first
    found = store.search(name, queries, TOP_K, with_versions=False, filter='array_contains_any(categories, ["rare"])')
    assert [[i for i in row if i] for row in found.ids.tolist()] == [e[:30] for e in _exact(vectors, queries, rare)]
    plain = store.search(name, queries, TOP_K, with_versions=False)  # unfiltered: the approximate search as ever
    assert (plain.ids != 0).all()
