"""The column insert / upsert request equals the one pymilvus builds from row dicts (pure: no server)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from pymilvus import DataType
from pymilvus.client.prepare import Prepare

from workers.infra.row_keys import OPEN
from workers.infra.vector_store import Rows, insert_request


def _fields(dim: int, keyed: bool = True) -> list[dict[str, Any]]:
    """Fields as ``describe_collection`` reports those of ``VectorStore.create_collection`` (``keyed``) or of
    collections made before row keys (id = item id)."""
    if not keyed:
        return [
            {"field_id": 100, "name": "id", "type": DataType.INT64, "params": {}, "is_primary": True},
            {"field_id": 101, "name": "vector", "type": DataType.FLOAT_VECTOR, "params": {"dim": dim}},
            {"field_id": 102, "name": "model_version", "type": DataType.VARCHAR, "params": {"max_length": 128}},
            {"field_id": 103, "name": "segment", "type": DataType.VARCHAR, "params": {"max_length": 255}},
            {"field_id": 104, "name": "generation", "type": DataType.INT64, "params": {}},
        ]
    return [
        {"field_id": 100, "name": "id", "type": DataType.VARCHAR, "params": {"max_length": 24}, "is_primary": True},
        {"field_id": 101, "name": "item_id", "type": DataType.INT64, "params": {}},
        {"field_id": 102, "name": "vector", "type": DataType.FLOAT_VECTOR, "params": {"dim": dim}},
        {"field_id": 103, "name": "model_version", "type": DataType.VARCHAR, "params": {"max_length": 128}},
        {"field_id": 104, "name": "segment", "type": DataType.VARCHAR, "params": {"max_length": 255}},
        {"field_id": 105, "name": "generation", "type": DataType.INT64, "params": {}},
        {"field_id": 106, "name": "gen_to", "type": DataType.INT64, "params": {}},
    ]


@pytest.mark.parametrize(
    ("keyed", "upsert"), [(True, False), (True, True), (False, False)], ids=["keyed", "keyed-upsert", "item-id-keys"]
)
@pytest.mark.parametrize("n", [1, 3, 257])
def test_request_equals_pymilvus_row_request(n: int, keyed: bool, upsert: bool) -> None:
    rng = np.random.default_rng(n)
    ids = rng.integers(1, np.iinfo(np.int64).max, n, dtype=np.int64)
    ids[0] = np.iinfo(np.int64).max  # the largest id survives the column path
    vectors = rng.standard_normal((n, 16)).astype(np.float32)
    vectors[0, 0] = np.float32(1e-45)  # a subnormal, bit for bit
    rows = Rows.of(ids, vectors, "v-7", 3, gen_to=9 if upsert else OPEN)
    columns = rows.columns("seg_a", keyed)
    fields = _fields(16, keyed)
    dicts = [{**{k: c[i] for k, c in columns.items()}, "vector": vectors[i]} for i in range(n)]
    prepare = Prepare.row_upsert_param if upsert else Prepare.row_insert_param
    theirs = prepare("coll", dicts, "seg_a", fields, enable_dynamic=False, schema_timestamp=42)
    mine = insert_request("coll", "seg_a", {"fields": fields}, 42, columns, vectors, upsert=upsert)
    assert mine == theirs
    assert mine.SerializeToString(deterministic=True) == theirs.SerializeToString(deterministic=True)
    vector_field = next(f for f in mine.fields_data if f.field_name == "vector")
    got = np.frombuffer(np.asarray(vector_field.vectors.float_vector.data, dtype=np.float32).tobytes(), "<f4")
    assert np.array_equal(got.reshape(n, 16).view(np.uint32), vectors.view(np.uint32))


def test_a_field_without_data_or_a_wrong_dim_is_refused() -> None:
    vectors = np.zeros((3, 8), dtype=np.float32)
    columns = Rows.of(np.arange(1, 4), vectors, "v", 0).columns("all", keyed=True)
    del columns["segment"]
    with pytest.raises(ValueError, match="no data for field 'segment'"):
        insert_request("coll", "all", {"fields": _fields(8)}, 0, columns, vectors)
    columns = Rows.of(np.arange(1, 4), vectors, "v", 0).columns("all", keyed=True)
    with pytest.raises(ValueError, match="dim 8, the collection has 16"):
        insert_request("coll", "all", {"fields": _fields(16)}, 0, columns, vectors)
