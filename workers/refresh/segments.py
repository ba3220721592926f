"""Segments (region, language, ...) of items, and their Milvus partition names.

An item belongs to the segment of its most recent click that named one; items never clicked with
a segment live in the default segment. Each segment is one Milvus partition of the collection, so
a search can be pruned to the segments a caller asks for. Every version is still built whole (see
docs/freshness.md for why per-segment rebuilds do not pay)."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from model.data.types import IntArray
from workers.infra.vector_store import DEFAULT_SEGMENT

_SAFE = re.compile(r"^[A-Za-z0-9_]{1,32}$")


def partition_name(segment: str | None) -> str:
    """A valid, collision-free Milvus partition name for a click's segment."""
    if segment is None or segment == DEFAULT_SEGMENT:
        return DEFAULT_SEGMENT
    if _SAFE.match(segment):
        return f"s_{segment}"
    return "x_" + segment.encode().hex()


class SegmentMap:
    """item id -> segment, persisted in SQLite next to the refresh state."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(path, check_same_thread=False)  # one refresh loop uses it at a time
        self._conn.execute("CREATE TABLE IF NOT EXISTS item_segment (item_id INTEGER PRIMARY KEY, segment TEXT)")
        self._conn.commit()

    def update(self, pairs: Iterable[tuple[int, str | None]]) -> None:
        rows = [(item, seg) for item, seg in pairs if seg is not None]
        with self._conn:
            self._conn.executemany("INSERT OR REPLACE INTO item_segment VALUES (?, ?)", rows)

    def group(self, ids: IntArray) -> dict[str, IntArray]:
        """Partition name -> the given item ids that belong to it."""
        known = dict(self._conn.execute("SELECT item_id, segment FROM item_segment").fetchall())
        parts = np.array([partition_name(known.get(int(i))) for i in ids.tolist()], dtype=object)
        return {str(p): ids[parts == p] for p in np.unique(parts)} if len(ids) else {}

    def close(self) -> None:
        self._conn.close()
