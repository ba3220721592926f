"""Raw search responses -> ``[nq, top_k]`` arrays, exactly as pymilvus' own result objects read them."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pymilvus import MilvusException
from pymilvus.client.search_result import SearchResult
from pymilvus.grpc_gen import schema_pb2

from workers.infra.vector_store import PAD_ID, fill_from_result


def _response(topks: list[int], rng: np.random.Generator) -> schema_pb2.SearchResultData:
    total = sum(topks)
    result = schema_pb2.SearchResultData(num_queries=len(topks), top_k=max(topks, default=0))
    result.ids.int_id.data.extend(rng.integers(1, 1 << 40, total).tolist())
    result.scores.extend(rng.standard_normal(total).astype(np.float32).tolist())
    result.topks.extend(topks)
    result.primary_field_name = "id"
    return result


@pytest.mark.parametrize("topks", [[5, 5, 5], [5, 0, 3, 5], [0, 0], [1]])
def test_raw_result_equals_pymilvus_hits(topks: list[int]) -> None:
    response = _response(topks, np.random.default_rng(len(topks)))
    nq, top_k = len(topks), 5
    ids = np.full((nq, top_k), PAD_ID, dtype=np.int64)
    scores = np.full((nq, top_k), -math.inf, dtype=np.float32)
    fill_from_result(response, ids, scores)
    for row, hits in enumerate(SearchResult(response, -1)):
        n = len(hits.ids)
        assert ids[row, :n].tolist() == list(hits.ids)
        np.testing.assert_array_equal(scores[row, :n], np.asarray(hits.distances, dtype=np.float32))
        assert np.all(ids[row, n:] == PAD_ID) and np.all(scores[row, n:] == -math.inf)


def test_raw_result_with_a_wrong_query_count_is_an_error() -> None:
    response = _response([2, 2], np.random.default_rng(0))
    with pytest.raises(MilvusException):
        fill_from_result(response, np.zeros((3, 2), dtype=np.int64), np.zeros((3, 2), dtype=np.float32))
