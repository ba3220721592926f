"""What a recall may return (issue 32): availability, the request's filters and exclusions, as Milvus
expressions where they can be applied inside the search, and as per-user sets applied after it.

* **Inside the search** (the rows a search considers, so a filtered reply still holds ``top_k``
  items when that many pass): the request's segment and category filters, on the catalogue metadata
  every row carries (``item_segment``, ``categories``: :mod:`workers.infra.vector_store`), and the
  withdrawn items while there are at most ``recall.unavailable_in_search`` of them
  (``item_id not in [...]``: measured +3 ms per search at 1,000 ids, +47 ms at 10,000, on 100k rows).
  Requests whose filters differ are searched apart (one search per distinct expression).
* **After the search**, per user: ``exclude_items`` and, with ``exclude_seen``, the user's history
  (they differ per user, and a search is shared by a micro-batch), the withdrawn items beyond
  ``recall.unavailable_in_search``, and the filters on a collection built before the metadata fields.
  Each interest's search then asks for that many more candidates (``top_k`` + the user's exclusions,
  + ``recall.post_filter_overfetch`` for what is not counted), so ``top_k`` items remain whenever
  the catalogue allows (always for the exclusions; for withdrawn items past the bound and for
  old collections, when no more than ``post_filter_overfetch`` of an interest's best are left out).

:meth:`RecallFilters.admits` is the reference meaning: an item with no segment is in no named
segment (``item_segment == ""`` matches no include list and every exclude list passes it), one
without categories has none.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np

from model.data.items import ItemCatalogue
from schemas.messages import RecallFilters
from workers.catalogue.view import CatalogueView
from workers.settings import RecallSettings

__all__ = ["Filtering", "ViewCategories", "availability_expression", "filter_expression", "join"]

_NONE: Final = ""  # item_segment of an item without a segment


def _strings(values: Iterable[str]) -> str:
    # Segments ([A-Za-z0-9_-]) and categories (no '"' nor '\', schemas.messages.CATEGORY_PATTERN) need no escaping.
    return "[" + ", ".join(f'"{v}"' for v in sorted(set(values))) + "]"


def filter_expression(filters: RecallFilters | None) -> str:
    """The Milvus expression of ``filters``' segment and category conditions (``""``: none)."""
    if filters is None:
        return ""
    parts: list[str] = []
    if filters.include_segments is not None:
        parts.append(f"item_segment in {_strings(filters.include_segments)}")
    if filters.exclude_segments:
        parts.append(f"item_segment not in {_strings(filters.exclude_segments)}")
    if filters.include_categories is not None:
        parts.append(f"array_contains_any(categories, {_strings(filters.include_categories)})")
    if filters.exclude_categories:
        parts.append(f"not array_contains_any(categories, {_strings(filters.exclude_categories)})")
    return join(parts)


def availability_expression(unavailable: Collection[int]) -> str:
    """``item_id not in [...]`` of the withdrawn items (``""`` when none)."""
    if not unavailable:
        return ""
    return f"item_id not in [{', '.join(str(i) for i in sorted(unavailable))}]"


def join(parts: Sequence[str]) -> str:
    """The conjunction of the non-empty ``parts``."""
    kept = [p for p in parts if p]
    if len(kept) <= 1:
        return kept[0] if kept else ""
    return " and ".join(f"({p})" for p in kept)


def has_metadata_conditions(filters: RecallFilters | None) -> bool:
    """Whether ``filters`` restrict by segment or category (``exclude_items`` alone does not)."""
    return bool(filter_expression(filters))


@dataclass(frozen=True, slots=True)
class Filtering:
    """``recall.unavailable_in_search`` and ``recall.post_filter_overfetch``."""

    unavailable_in_search: int
    post_filter_overfetch: int

    @classmethod
    def from_settings(cls, recall: RecallSettings | None = None) -> Filtering:
        recall = RecallSettings() if recall is None else recall
        return cls(recall.unavailable_in_search, recall.post_filter_overfetch)


class ViewCategories:
    """Categories for the ``diversity`` merge: an item's from the catalogue stream when it announced
    some, else from ``base`` (the data set's item file). Looked up per call for the candidates only:
    nothing is rebuilt when the catalogue changes."""

    def __init__(self, view: CatalogueView, base: ItemCatalogue | None = None) -> None:
        self.view = view
        self.base = base

    def matrix(self, item_ids: np.ndarray) -> np.ndarray:
        """``[n, C]`` multi-hot categories of ``item_ids`` (C: the categories among them; all False for
        an item with none)."""
        ids = np.asarray(item_ids, dtype=np.int64)
        from_base = self.base.matrix(ids) if self.base is not None else None
        streamed: dict[int, tuple[str, ...]] = {}
        for n, item in enumerate(ids.tolist()):
            state = self.view.get(item)
            if state is not None and state.categories:
                streamed[n] = state.categories
        if not streamed:
            return from_base if from_base is not None else np.zeros((ids.shape[0], 0), dtype=bool)
        names = sorted({c for cats in streamed.values() for c in cats})
        if self.base is not None:
            names = sorted(set(names) | set(self.base.names))
        column = {name: c for c, name in enumerate(names)}
        out = np.zeros((ids.shape[0], len(names)), dtype=bool)
        if from_base is not None and self.base is not None:
            remap = np.asarray([column[name] for name in self.base.names], dtype=np.int64)
            rows, cols = np.nonzero(from_base)
            out[rows, remap[cols]] = True
        for n, cats in streamed.items():
            out[n] = False
            out[n, [column[c] for c in cats]] = True
        return out
