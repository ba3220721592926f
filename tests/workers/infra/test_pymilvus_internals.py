"""The two pymilvus internals the vector store keeps (``VectorStore._write_raw``, ``_search_raw``: the
public calls convert every float and every hit in Python, see their docstrings and
``bench.pymilvus_paths``). These tests fail when a pymilvus upgrade moves what they use, instead of
the store falling back silently or sending something else: the names must exist, and on the real
embedded Milvus both paths must write and find exactly what the public API does."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

import workers.infra.vector_store as vector_store
from workers.infra.vector_store import Rows, VectorStore
from workers.settings import MilvusSettings

DIM = 8


def test_the_internals_are_where_the_store_expects_them() -> None:
    assert vector_store._RAW_SEARCH, "pymilvus moved the search internals: the store would use the public search"
    from pymilvus import MilvusClient

    for name in ("_get_connection", "_generate_call_context"):
        assert callable(getattr(MilvusClient, name, None)), name


@pytest.mark.integration
def test_raw_paths_write_and_find_what_the_public_api_does(milvus_uri: str) -> None:
    rng = np.random.default_rng(0)
    name = f"raw_{uuid.uuid4().hex[:10]}"
    with VectorStore(milvus_uri, MilvusSettings(index_type="FLAT")) as store:
        store.create_collection(name, DIM)
        store.build_index(name)
        store.load(name)
        try:
            ids = np.arange(1, 201, dtype=np.int64) * 7919
            vectors = rng.standard_normal((200, DIM)).astype(np.float32)
            assert store.write_rows(name, Rows.of(ids, vectors, "v1", 0)) == 200  # through _write_raw
            conn = store.client._get_connection()
            for stub in ("Insert", "Upsert", "Search"):
                assert callable(getattr(conn._stub, stub, None)), stub
            public = store.client.query(
                name, filter="item_id > 0", output_fields=["item_id", "vector"], consistency_level="Strong"
            )
            stored = {int(r["item_id"]): np.asarray(r["vector"], dtype=np.float32) for r in public}
            assert sorted(stored) == ids.tolist()
            assert all(np.array_equal(stored[int(i)], v) for i, v in zip(ids, vectors, strict=True))

            queries = rng.standard_normal((5, DIM)).astype(np.float32)
            raw = store.search(name, queries, 10, with_versions=False)  # through _search_raw
            versions = store.search(name, queries, 10, with_versions=True)  # the public client.search
            assert np.array_equal(raw.ids, versions.ids)
            assert np.allclose(raw.scores, versions.scores, rtol=1e-5)
            exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
            assert np.array_equal(raw.ids, ids[exact])
        finally:
            store.drop_collection(name)
