"""A fake store whose searches fail on cue, for the budget, breaker and deadline tests."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from tests.workers.recall.test_engine import FakeStore
from workers.infra.vector_store import SearchResult


@dataclass
class ScriptedStore(FakeStore):
    """:class:`FakeStore` whose ``n``-th search (0-based, failed ones counted) raises ``script[n]``;
    ``on_search`` runs before each search (a test's clock moves there)."""

    script: dict[int, Exception] = field(default_factory=dict)
    on_search: Callable[[], None] | None = None

    def search(
        self,
        name: str,
        queries: np.ndarray,
        top_k: int,
        *,
        with_versions: bool = True,
        max_generation: int | None = None,
    ) -> SearchResult:
        if self.on_search is not None:
            self.on_search()
        failure = self.script.get(len(self.calls))
        if failure is not None:
            self.calls.append((name, len(queries), top_k))
            raise failure
        return super().search(name, queries, top_k, with_versions=with_versions, max_generation=max_generation)
