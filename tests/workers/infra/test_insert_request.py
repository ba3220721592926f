"""The column insert request equals the one pymilvus builds from row dicts (pure: no server)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from pymilvus import DataType
from pymilvus.client.prepare import Prepare

from workers.infra.vector_store import insert_request


def _fields(dim: int, generation: bool = True) -> list[dict[str, Any]]:
    """Fields as ``describe_collection`` reports those of ``VectorStore.create_collection``."""
    fields: list[dict[str, Any]] = [
        {"field_id": 100, "name": "id", "description": "", "type": DataType.INT64, "params": {}, "is_primary": True},
        {"field_id": 101, "name": "vector", "description": "", "type": DataType.FLOAT_VECTOR, "params": {"dim": dim}},
        {"field_id": 102, "name": "model_version", "type": DataType.VARCHAR, "params": {"max_length": 128}},
        {"field_id": 103, "name": "segment", "type": DataType.VARCHAR, "params": {"max_length": 255}},
    ]
    if generation:
        fields.append({"field_id": 104, "name": "generation", "type": DataType.INT64, "params": {}})
    return fields


@pytest.mark.parametrize("generation", [True, False], ids=["with-generation", "before-generations"])
@pytest.mark.parametrize("n", [1, 3, 257])
def test_request_equals_pymilvus_row_request(n: int, generation: bool) -> None:
    rng = np.random.default_rng(n)
    ids = rng.integers(1, np.iinfo(np.int64).max, n, dtype=np.int64)
    ids[0] = np.iinfo(np.int64).max  # the largest id survives the column path
    vectors = rng.standard_normal((n, 16)).astype(np.float32)
    vectors[0, 0] = np.float32(1e-45)  # a subnormal, bit for bit
    constants: dict[str, str | int] = {"model_version": "v-7", "segment": "seg_a", "generation": 3}
    fields = _fields(16, generation)
    rows = [
        {"id": i, "vector": v, **{k: c for k, c in constants.items() if generation or k != "generation"}}
        for i, v in zip(ids.tolist(), vectors, strict=True)
    ]
    theirs = Prepare.row_insert_param("coll", rows, "seg_a", fields, enable_dynamic=False, schema_timestamp=42)
    mine = insert_request("coll", "seg_a", {"fields": fields}, 42, ids, vectors, constants)
    assert mine == theirs
    assert mine.SerializeToString(deterministic=True) == theirs.SerializeToString(deterministic=True)
    got = np.frombuffer(np.asarray(mine.fields_data[1].vectors.float_vector.data, dtype=np.float32).tobytes(), "<f4")
    assert np.array_equal(got.reshape(n, 16).view(np.uint32), vectors.view(np.uint32))


def test_a_field_without_data_or_a_wrong_dim_is_refused() -> None:
    ids, vectors = np.arange(1, 4), np.zeros((3, 8), dtype=np.float32)
    with pytest.raises(ValueError, match="no data for field 'segment'"):
        insert_request("coll", "all", {"fields": _fields(8)}, 0, ids, vectors, {"model_version": "v", "generation": 0})
    with pytest.raises(ValueError, match="dim 8, the collection has 16"):
        insert_request(
            "coll", "all", {"fields": _fields(16)}, 0, ids, vectors, {"model_version": "v", "segment": "all"}
        )
