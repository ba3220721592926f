"""Exact set of 128-bit event-id digests, held in memory as sorted numpy runs (a tiny LSM tree).

Why: a ``UNIQUE`` index on random event ids makes every insert touch a random B-tree page, and with
``synchronous=FULL`` each of those pages is written to the WAL at every commit. At 1M events per file
that cost ~25 µs per event, and it keeps growing with the file. The digests of a partition's events
fit in memory (16 bytes each: 10M events = 160 MB) and are rebuilt from the file when it is opened,
so the file itself can be append-only.

The digest is BLAKE2b-128 of the UTF-8 event id. Two different ids share a digest with probability
~n^2 / 2^129 (1e-25 for 10M ids): the set is exact for any practical purpose, as UUIDs are.

Layout: each run is a pair of ``uint64`` arrays (high half, sorted; low half, same order). ``add``
appends a run and merges the newest runs while the last is at least as large as the one before, so
there are O(log n) runs and each digest is re-sorted O(log n) times.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Final

import numpy as np
import numpy.typing as npt

DIGEST_BYTES: Final = 16
_U64: Final = np.dtype("<u8")

U64Array = npt.NDArray[np.uint64]


def digest(event_id: str) -> bytes:
    """The 16-byte digest stored next to an event."""
    return hashlib.blake2b(event_id.encode("utf-8"), digest_size=DIGEST_BYTES).digest()


def split_digests(blob: bytes) -> tuple[U64Array, U64Array]:
    """Concatenated digests -> (high, low) ``uint64`` halves."""
    if len(blob) % DIGEST_BYTES:
        raise ValueError(f"{len(blob)} bytes is not a whole number of {DIGEST_BYTES}-byte digests")
    pairs = np.frombuffer(blob, dtype=_U64).reshape(-1, 2)
    return pairs[:, 0], pairs[:, 1]  # read-only views: runs index them into sorted copies


class _Run:
    __slots__ = ("high", "low")

    def __init__(self, high: U64Array, low: U64Array) -> None:
        order = np.argsort(high, kind="stable")
        self.high: U64Array = high[order]
        self.low: U64Array = low[order]

    def __len__(self) -> int:
        return len(self.high)

    def contains(self, high: U64Array, low: U64Array) -> npt.NDArray[np.bool_]:
        """Membership of each (high, low) pair."""
        found = np.zeros(len(high), dtype=bool)
        if not len(self.high):
            return found
        left = np.searchsorted(self.high, high, side="left")
        hit = left < len(self.high)
        hit[hit] = self.high[left[hit]] == high[hit]
        # A high-half match is a duplicate (or a 1-in-2^64 near miss): confirm the low half exactly.
        for i in np.flatnonzero(hit):
            j = int(left[i])
            while j < len(self.high) and self.high[j] == high[i]:
                if self.low[j] == low[i]:
                    found[i] = True
                    break
                j += 1
        return found


class DigestSet:
    """Exact membership of 128-bit digests; ``add`` only (events are never deleted from a partition)."""

    def __init__(self, digests: Iterable[bytes] = ()) -> None:
        self._runs: list[_Run] = []
        self._size = 0
        blob = b"".join(digests)
        if blob:
            high, low = split_digests(blob)
            self._push(high, low)

    def __len__(self) -> int:
        return self._size

    @property
    def runs(self) -> int:
        return len(self._runs)

    def contains(self, digests: Sequence[bytes]) -> npt.NDArray[np.bool_]:
        """Which of ``digests`` are already in the set."""
        found = np.zeros(len(digests), dtype=bool)
        if not digests or not self._runs:
            return found
        high, low = split_digests(b"".join(digests))
        for run in self._runs:
            found |= run.contains(high, low)
        return found

    def add(self, digests: Sequence[bytes]) -> None:
        """Add digests that are not in the set yet (the caller filtered them with ``contains``)."""
        if digests:
            high, low = split_digests(b"".join(digests))
            self._push(high, low)

    def _push(self, high: U64Array, low: U64Array) -> None:
        self._runs.append(_Run(high, low))
        self._size += len(high)
        while len(self._runs) > 1 and len(self._runs[-1]) >= len(self._runs[-2]):
            newer, older = self._runs.pop(), self._runs.pop()
            self._runs.append(_Run(np.concatenate([older.high, newer.high]), np.concatenate([older.low, newer.low])))


class DigestWindow:
    """The digests of the most recent events only: between ``size`` and ``2 * size`` of them.

    Two :class:`DigestSet` generations: new digests go to the newer one; once it holds ``size`` the
    older one is dropped and the newer becomes the older. Memory is bounded by ``2 * size`` digests
    (16 bytes each) however long the stream runs; a digest is remembered for at least ``size``
    additions after its own.
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("a digest window holds at least one digest")
        self.size = size
        self._older = DigestSet()
        self._newer = DigestSet()

    def __len__(self) -> int:
        return len(self._older) + len(self._newer)

    def contains(self, digests: Sequence[bytes]) -> npt.NDArray[np.bool_]:
        return self._newer.contains(digests) | self._older.contains(digests)

    def add(self, digests: Sequence[bytes]) -> None:
        self._newer.add(digests)
        if len(self._newer) >= self.size:
            self._older, self._newer = self._newer, DigestSet()
