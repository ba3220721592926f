"""The catalogue metadata every row written into Milvus carries (issue 32): the item's segment and
categories as the catalogue state holds them when the row is written, for the requests' filters.

A writer's :class:`~workers.infra.vector_store.VectorStore` is given one
(``VectorStore(..., metadata=CatalogueMetadata.open(settings))``): every write goes through
:meth:`VectorStore.write_rows` (a full publish, a delta, a fast-path step, the rows a write closes or
a repair reopens), so each row takes the metadata of its item at that moment. What changed since
is found through :meth:`changed_since` (the catalogue state's change feed): the next delta rewrites
those items (:mod:`workers.refresh.delta`). An item the catalogue does not know has no segment
(``""``) and no categories.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from workers.catalogue.reader import CatalogueReader, Cursor
from workers.settings import Settings

__all__ = ["CatalogueMetadata", "Cursor"]


class CatalogueMetadata:
    """:class:`~workers.infra.vector_store.RowMetadata` read from the catalogue state (SQLite, read-only);
    safe to call from several threads (the refresh loop and its fast path share a store)."""

    def __init__(self, reader: CatalogueReader) -> None:
        self.reader = reader
        self._lock = threading.Lock()

    @classmethod
    def open(cls, settings: Settings) -> CatalogueMetadata:
        """The catalogue the settings describe (``state_dir``, ``kafka.items_topic``)."""
        return cls.at(settings.state_dir, settings.kafka.items_topic)

    @classmethod
    def at(cls, state_dir: Path, topic: str) -> CatalogueMetadata:
        return cls(CatalogueReader(state_dir, topic))

    def metadata_of(self, item_ids: np.ndarray) -> tuple[list[str], list[list[str]]]:
        """Segments (``""``: none) and categories of ``item_ids``, in their order."""
        ids = [int(i) for i in np.asarray(item_ids, dtype=np.int64).tolist()]
        with self._lock:
            known = self.reader.metadata(ids)
        segments: list[str] = []
        categories: list[list[str]] = []
        for item in ids:
            record = known.get(item)
            segments.append((record.segment or "") if record is not None else "")
            categories.append(list(record.categories) if record is not None else [])
        return segments, categories

    def changed_since(self, cursor: Cursor) -> tuple[np.ndarray, Cursor]:
        """Ids of the items whose catalogue record was written after ``cursor`` (any change), and the
        cursor to ask from next time."""
        with self._lock:
            records, after = self.reader.changed_since(cursor)
        ids = np.unique(np.fromiter((r.item_id for r in records), dtype=np.int64, count=len(records)))
        return ids, after

    def close(self) -> None:
        with self._lock:
            self.reader.close()
