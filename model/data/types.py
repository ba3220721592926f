"""In-memory shapes that every reader produces and every consumer takes."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from model.data.items import ItemCatalogue
    from model.vocab import ItemVocab

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Sequences:
    """Users' click sequences in CSR form (chronological, oldest first).

    ``items[offsets[i]:offsets[i + 1]]`` are the clicks of ``user_ids[i]``.
    Items are embedding *rows* (>= 1; 0 is padding), not external ids: a data set's
    :class:`~model.vocab.ItemVocab` maps them to the catalogue's ids. ``item_count`` is the number
    of rows an embedding table needs (max row + 1).
    """

    user_ids: IntArray
    offsets: IntArray
    items: IntArray
    item_count: int

    def __post_init__(self) -> None:
        if self.offsets.shape[0] != self.user_ids.shape[0] + 1:
            raise ValueError("offsets must have one more entry than user_ids")
        if self.items.size and int(self.items.min()) < 1:
            raise ValueError("item ids must be >= 1 (0 is padding)")
        if self.items.size and int(self.items.max()) >= self.item_count:
            raise ValueError("item_count must exceed the largest item id")

    @property
    def num_users(self) -> int:
        return int(self.user_ids.shape[0])

    @property
    def num_events(self) -> int:
        return int(self.items.shape[0])

    def lengths(self) -> IntArray:
        return np.diff(self.offsets)

    def sequence(self, i: int) -> IntArray:
        return self.items[self.offsets[i] : self.offsets[i + 1]]

    def popularity(self) -> IntArray:
        """Click count per item id, length ``item_count``."""
        return np.bincount(self.items, minlength=self.item_count).astype(np.int64)

    def fingerprint(self) -> str:
        """Stable content hash (for checkpoint manifests)."""
        h = hashlib.sha256()
        for arr in (self.user_ids, self.offsets, self.items):
            h.update(np.ascontiguousarray(arr, dtype=np.int64).tobytes())
        h.update(str(self.item_count).encode())
        return h.hexdigest()[:16]

    @staticmethod
    def from_arrays(user_ids: list[int], seqs: list[IntArray], item_count: int | None = None) -> Sequences:
        """As :meth:`from_lists`, from one array per user: no Python object per click (a refresh round
        builds millions of clicks this way)."""
        lengths = np.array([s.shape[0] for s in seqs], dtype=np.int64)
        offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        items = np.concatenate(seqs).astype(np.int64, copy=False) if seqs else np.empty(0, dtype=np.int64)
        count = item_count if item_count is not None else (int(items.max()) + 1 if items.size else 1)
        return Sequences(np.asarray(user_ids, dtype=np.int64), offsets, items, count)

    @staticmethod
    def from_lists(user_ids: list[int], seqs: list[list[int]], item_count: int | None = None) -> Sequences:
        return Sequences.from_arrays(user_ids, [np.asarray(s, dtype=np.int64) for s in seqs], item_count)


@dataclass(frozen=True)
class HeldOut:
    """Held-out users for evaluation: a history to feed the model and a truth set to find.

    ``times`` (optional) holds the click time of every history item, aligned with ``histories``,
    where the data has timestamps (the mixed-tastes protocol merges two histories by them)."""

    user_ids: IntArray
    histories: list[IntArray]
    truths: list[IntArray]
    truth_protocol: str = field(default="all remaining items")
    times: list[IntArray] | None = None

    def __post_init__(self) -> None:
        if not (len(self.user_ids) == len(self.histories) == len(self.truths)):
            raise ValueError("user_ids, histories and truths must have the same length")
        if self.times is not None and [t.shape for t in self.times] != [h.shape for h in self.histories]:
            raise ValueError("times must hold one time per history item")

    @property
    def num_users(self) -> int:
        return len(self.histories)

    def head(self, n: int) -> HeldOut:
        """The first ``n`` users (e.g. a fixed quality slice)."""
        times = self.times[:n] if self.times is not None else None
        return HeldOut(self.user_ids[:n], self.histories[:n], self.truths[:n], self.truth_protocol, times)


@dataclass(frozen=True)
class Dataset:
    """A training set plus validation and test users over one row space, and the vocabulary that
    maps those rows to the catalogue's item ids (identity when the data's ids are already dense), and,
    where the data has them, the items' categories and titles by external id (``items``)."""

    name: str
    train: Sequences
    valid: HeldOut
    test: HeldOut
    item_count: int
    vocab: ItemVocab = field(default=None)  # type: ignore[assignment]
    items: ItemCatalogue | None = None

    def __post_init__(self) -> None:
        from model.vocab import ItemVocab

        if self.vocab is None:
            object.__setattr__(self, "vocab", ItemVocab.identity(self.item_count))
        if len(self.vocab) != self.item_count:
            raise ValueError(f"vocabulary has {len(self.vocab)} rows, the data set {self.item_count}")
