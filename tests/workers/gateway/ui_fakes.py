"""A gateway without Milvus or Kafka for the /ui API tests: an exact in-memory store with aliases and
the real :class:`RecallEngine`, :class:`RecallService` and admin code on top."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tests.workers.exact_search import exact_search
from workers.infra.vector_store import SearchResult

K, DIM, ITEMS, MAXLEN = 2, 4, 40, 5


def table(seed: int) -> np.ndarray:
    """Item vectors, row = item id (row 0 unused)."""
    return np.random.default_rng(seed).standard_normal((ITEMS + 1, DIM)).astype(np.float32)


class Tower:
    """Interest k = the mean of the known history's vectors, rotated by k (so K = 2 lists differ)."""

    maxlen = MAXLEN

    def __init__(self, vectors: np.ndarray) -> None:
        self.vectors = vectors

    def interests(self, histories: Sequence[Sequence[int]]) -> np.ndarray:
        out = np.zeros((len(histories), K, DIM), dtype=np.float32)
        for row, h in enumerate(histories):
            known = [i for i in list(h) if 0 < i <= ITEMS][-self.maxlen :]
            if known:
                mean = self.vectors[known].mean(axis=0)
                out[row] = [np.roll(mean, k) for k in range(K)]
        return out


@dataclass(frozen=True)
class Served:
    version: str
    collection: str
    tower: Tower
    generation: int = 0
    max_generation: int | None = None


@dataclass
class Store:
    """Collections ``<alias>_v<N>`` of item vectors, one alias; exact inner-product search."""

    alias: str
    collections: dict[str, np.ndarray] = field(default_factory=dict)
    target: str | None = None
    searches: int = 0
    props: dict[str, dict[str, str]] = field(default_factory=dict)  # collection properties (announcements)

    def resolve_alias(self, alias: str) -> str | None:
        return self.target if alias == self.alias else None

    def properties(self, name: str) -> dict[str, str]:
        return self.props.setdefault(name, {})

    def set_property(self, name: str, key: str, value: str) -> None:
        self.props.setdefault(name, {})[key] = value

    def point_alias(self, alias: str, collection: str) -> str | None:
        previous, self.target = self.target, collection
        return previous

    def has_collection(self, name: str) -> bool:
        return name in self.collections

    def count(self, name: str, segment: str | None = None) -> int:
        return int(self.collections[name].shape[0] - 1)

    def search(
        self,
        name: str,
        queries: np.ndarray,
        top_k: int,
        *,
        with_versions: bool = True,
        max_generation: int | None = None,
    ) -> SearchResult:
        self.searches += 1
        found = exact_search(self.collections[name], queries, top_k)
        return SearchResult(ids=found.ids, scores=found.scores.astype(np.float32))


@dataclass
class Live:
    """Follows the store's alias (as :class:`LiveModel` does), one tower per collection."""

    store: Store

    def current(self, *, force: bool = False) -> Served | None:
        target = self.store.target
        if target is None:
            return None
        return Served(target.rsplit("_", 1)[1], target, Tower(self.store.collections[target]))


class Histories:
    def __init__(self, data: dict[int, list[int]]) -> None:
        self.data = data

    def history(self, user_id: int, maxlen: int) -> list[int]:
        return self.data.get(user_id, [])[-maxlen:]


@dataclass
class Manifest:
    created_at: float


@dataclass
class Checkpoint:
    manifest: Manifest


@dataclass
class Registry:
    """What the live view asks a model registry: ``version_of`` and the version's ``created_at``."""

    alias: str
    root: Path  # where generation files would be (none here: generation 0)
    created: dict[str, float] = field(default_factory=dict)

    def version_of(self, collection: str) -> str | None:
        prefix = self.alias + "_"
        return collection.removeprefix(prefix) if collection.startswith(prefix) else None

    def checkpoint(self, version: str) -> Checkpoint:
        return Checkpoint(Manifest(self.created[version]))
