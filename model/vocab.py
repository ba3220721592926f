"""The item vocabulary: opaque 64-bit external item ids <-> dense embedding rows.

Real catalogues have sparse, unbounded keys (hashed SKUs, database keys, time-based ids), so an id
is never used as a row. Row 0 is padding; rows 1..n hold the items in the order they first
appeared. Memory follows the number of items (three int64 and one float64 per item), never the
magnitude of an id. Vocabularies only grow by appending (:meth:`ItemVocab.extend`), so the rows of
an older version keep their meaning in a newer one; :meth:`ItemVocab.compact` is the one operation
that renumbers (a full rebuild that drops expired items).

``last_seen`` holds, per row, the time (seconds) of the newest click that named the item; items
not clicked for a TTL are *expired*: they leave the published versions (see :meth:`active_rows`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

MAX_ITEM_ID = (1 << 63) - 1
IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class ItemVocab:
    """``ids[row]`` is the external id of ``row``; ``ids[0] == 0`` is padding."""

    ids: IntArray
    last_seen: FloatArray
    _order: IntArray = field(init=False, repr=False, compare=False)
    _sorted: IntArray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ids = np.ascontiguousarray(self.ids, dtype=np.int64)
        if ids.ndim != 1 or ids.shape[0] < 1 or ids[0] != 0:
            raise ValueError("a vocabulary starts with the padding id 0 at row 0")
        if ids.shape[0] > 1 and int(ids[1:].min()) < 1:
            raise ValueError("item ids must be >= 1 (0 is padding)")
        if self.last_seen.shape != ids.shape:
            raise ValueError("last_seen must have one entry per row")
        order = np.argsort(ids, kind="stable")
        ordered = ids[order]
        if ordered.shape[0] > 1 and bool((ordered[1:] == ordered[:-1]).any()):
            raise ValueError("an item id appears twice in the vocabulary")
        object.__setattr__(self, "ids", ids)
        object.__setattr__(self, "_order", order.astype(np.int64))
        object.__setattr__(self, "_sorted", ordered)

    # -- construction ---------------------------------------------------------------------------

    @staticmethod
    def from_ids(external: Iterable[int] | IntArray, *, seen_at: float = 0.0) -> ItemVocab:
        """Rows 1..n for the distinct ids of ``external`` in first-appearance order."""
        return ItemVocab.empty().extend(external, seen_at=seen_at)

    @staticmethod
    def empty() -> ItemVocab:
        return ItemVocab(np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.float64))

    @staticmethod
    def identity(rows: int, *, seen_at: float = 0.0) -> ItemVocab:
        """Dense ids (id = row): what checkpoints written before the vocabulary existed meant."""
        last = np.full(rows, seen_at, dtype=np.float64)
        return ItemVocab(np.arange(rows, dtype=np.int64), last)

    # -- lookups --------------------------------------------------------------------------------

    def __len__(self) -> int:
        """Rows, padding included: the embedding table's size."""
        return int(self.ids.shape[0])

    @property
    def items(self) -> int:
        """Distinct items (rows without padding)."""
        return len(self) - 1

    def rows(self, external: Iterable[int] | IntArray) -> IntArray:
        """The row of each external id; 0 (padding) for ids this vocabulary does not know."""
        ext = np.asarray(external if isinstance(external, np.ndarray) else list(external), dtype=np.int64)
        pos = np.searchsorted(self._sorted, ext)
        pos = np.minimum(pos, self._sorted.shape[0] - 1)
        found = (self._sorted[pos] == ext) & (ext > 0)
        return np.where(found, self._order[pos], 0).astype(np.int64)

    def external(self, rows: IntArray) -> IntArray:
        return self.ids[np.asarray(rows, dtype=np.int64)]

    def contains(self, external: Iterable[int] | IntArray) -> npt.NDArray[np.bool_]:
        return self.rows(external) > 0

    # -- growth, expiry, compaction -------------------------------------------------------------

    def new_ids(self, external: Iterable[int] | IntArray) -> IntArray:
        """The distinct ids of ``external`` this vocabulary does not know, in first-appearance order."""
        ext = np.asarray(external if isinstance(external, np.ndarray) else list(external), dtype=np.int64)
        new = ext[self.rows(ext) == 0]
        uniq, first = np.unique(new, return_index=True)
        return uniq[np.argsort(first, kind="stable")].astype(np.int64)

    def prefix_within(self, external: IntArray, new_limit: int) -> int:
        """The length of the longest prefix of ``external`` that names at most ``new_limit`` distinct ids
        this vocabulary does not know (all of it when it names no more): where a capped consumer of a
        click log stops, so that the rest waits, in order, for its next turn."""
        ext = np.asarray(external, dtype=np.int64)
        at = np.flatnonzero(self.rows(ext) == 0)
        _, first = np.unique(ext[at], return_index=True)
        if first.shape[0] <= new_limit:
            return int(ext.shape[0])
        return int(np.sort(at[first])[max(new_limit, 0)])

    def extend(
        self, external: Iterable[int] | IntArray, *, seen_at: float = 0.0, limit: int | None = None
    ) -> ItemVocab:
        """Append the ids not known yet (first-appearance order); known rows keep their numbers.
        ``limit``: append at most this many (the first to appear); None = all."""
        ext = np.asarray(external if isinstance(external, np.ndarray) else list(external), dtype=np.int64)
        if ext.size and (int(ext.min()) < 1):
            raise ValueError("item ids must be in 1..2^63-1")
        fresh = self.new_ids(ext)
        if limit is not None:
            fresh = fresh[: max(limit, 0)]
        if fresh.size == 0:
            return self
        ids = np.concatenate([self.ids, fresh])
        last = np.concatenate([self.last_seen, np.full(fresh.shape[0], seen_at, dtype=np.float64)])
        return ItemVocab(ids, last)

    def touch(self, external: IntArray, times: FloatArray) -> ItemVocab:
        """Record clicks: ``last_seen`` of each known id becomes the newest of its click times."""
        rows = self.rows(external)
        known = rows > 0
        last = self.last_seen.copy()
        np.maximum.at(last, rows[known], np.asarray(times, dtype=np.float64)[known])
        return ItemVocab(self.ids, last)

    def active_rows(self, *, now: float, ttl_s: float | None) -> IntArray:
        """Rows (padding excluded) of the items clicked within ``ttl_s`` of ``now``; all if no TTL."""
        rows = np.arange(1, len(self), dtype=np.int64)
        if ttl_s is None:
            return rows
        return rows[self.last_seen[1:] >= now - ttl_s]

    def compact(self, keep_rows: IntArray) -> tuple[ItemVocab, IntArray]:
        """A vocabulary of ``keep_rows`` only (renumbered 1..n in their order) and the old->new row map
        (0 for dropped rows), for a full rebuild that reclaims expired rows."""
        keep = np.asarray(keep_rows, dtype=np.int64)
        keep = keep[keep > 0]
        mapping = np.zeros(len(self), dtype=np.int64)
        mapping[keep] = np.arange(1, keep.shape[0] + 1, dtype=np.int64)
        ids = np.concatenate([[0], self.ids[keep]]).astype(np.int64)
        last = np.concatenate([[0.0], self.last_seen[keep]])
        return ItemVocab(ids, last), mapping

    # -- persistence ----------------------------------------------------------------------------

    def save(self, path: Path) -> None:
        """Write ``path`` (``.npz``) atomically."""
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, ids=self.ids, last_seen=self.last_seen)
        os.replace(tmp, path)

    @staticmethod
    def load(path: Path) -> ItemVocab:
        with np.load(path) as data:
            return ItemVocab(data["ids"].astype(np.int64), data["last_seen"].astype(np.float64))


def map_truth(vocab: ItemVocab, truth: IntArray) -> IntArray:
    """Truth items as rows; unknown items become distinct negative ids, so they count in |truth|
    (Recall = hits / |truth|) but can never be hit."""
    rows = vocab.rows(truth)
    unknown = rows == 0
    rows[unknown] = -np.arange(1, int(unknown.sum()) + 1, dtype=np.int64)
    return rows
