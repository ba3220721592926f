"""A serving store's search is tried once with the serving timeout; others retry (fake client: pure logic)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from pymilvus import MilvusException

from workers.infra import vector_store
from workers.infra.vector_store import VectorStore
from workers.settings import MilvusSettings


class Unavailable:
    """A MilvusClient whose searches fail with a transient error; records each call's timeout."""

    def __init__(self) -> None:
        self.timeouts: list[float | None] = []

    def describe_index(self, name: str, field: str, timeout: float | None = None) -> dict[str, str]:
        return {"index_type": "FLAT"}

    def describe_collection(self, name: str, timeout: float | None = None) -> dict[str, Any]:
        return {"fields": [{"name": "id"}, {"name": "vector"}]}  # item-id keys: no visibility filter

    def search(self, name: str, **kwargs: Any) -> Any:
        self.timeouts.append(kwargs.get("timeout"))
        raise MilvusException(code=2, message="unavailable")

    def close(self) -> None:
        pass


def test_a_serving_search_is_tried_once_with_the_serving_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vector_store.time, "sleep", lambda s: None)
    settings = MilvusSettings(timeout_s=30.0, serving_search_timeout_s=1.5)
    queries = np.zeros((2, 4), dtype=np.float32)
    serving = Unavailable()
    with pytest.raises(MilvusException):
        VectorStore("http://x", settings, client=serving, serving=True).search("c", queries, 5)  # type: ignore[arg-type]
    assert serving.timeouts == [1.5]
    batch = Unavailable()
    with pytest.raises(MilvusException):
        VectorStore("http://x", settings, client=batch).search("c", queries, 5)  # type: ignore[arg-type]
    assert batch.timeouts == [30.0] * 5  # the quality gate, evaluation: retried as before
