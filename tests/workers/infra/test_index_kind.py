"""The index a published collection gets follows its size (AUTO) unless one is configured."""

from __future__ import annotations

from typing import Any

import pytest

from workers.infra.vector_store import VectorStore
from workers.settings import MilvusSettings


class _NoClient:
    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"no Milvus call expected ({name})")


@pytest.mark.parametrize(
    ("index_type", "rows", "expected"),
    [
        ("AUTO", 0, "FLAT"),
        ("AUTO", 50_000, "FLAT"),
        ("AUTO", 50_001, "IVF_FLAT"),
        ("AUTO", 1_000_000, "IVF_FLAT"),
        ("HNSW", 10, "HNSW"),
        ("FLAT", 10**7, "FLAT"),
    ],
)
def test_index_kind(index_type: str, rows: int, expected: str) -> None:
    store = VectorStore("http://unused", MilvusSettings.model_validate({"index_type": index_type}), client=_NoClient())  # type: ignore[arg-type]
    assert store.index_kind(rows) == expected


def test_flat_threshold_is_a_setting() -> None:
    store = VectorStore("http://unused", MilvusSettings(flat_max_items=10), client=_NoClient())  # type: ignore[arg-type]
    assert (store.index_kind(10), store.index_kind(11)) == ("FLAT", "IVF_FLAT")
